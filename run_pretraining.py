from bertforge.cli.pretrain import main

raise SystemExit(main())
