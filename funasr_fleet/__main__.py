from funasr_fleet.cli import main

raise SystemExit(main())
