from xtremedistil.cli import main

raise SystemExit(main())
