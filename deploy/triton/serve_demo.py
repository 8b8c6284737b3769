from bertforge.serving.demo import main

raise SystemExit(main())
