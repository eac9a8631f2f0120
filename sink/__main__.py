from sink.cli import main

raise SystemExit(main())
