from pgqueue.cli import main

raise SystemExit(main())
