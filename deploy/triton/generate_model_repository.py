from bertforge.serving.repository import main

raise SystemExit(main())
