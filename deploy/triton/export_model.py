from bertforge.serving.export import main

raise SystemExit(main())
