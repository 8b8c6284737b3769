from bertforge.serving.server import main

raise SystemExit(main())
