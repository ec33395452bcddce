from mmserve.server.cli import main

raise SystemExit(main())
