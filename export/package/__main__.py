from export.package.cli import main

raise SystemExit(main())
