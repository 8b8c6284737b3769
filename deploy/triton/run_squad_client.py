from bertforge.serving.client import main

raise SystemExit(main())
