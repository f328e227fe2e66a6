from logstats.cli import main

raise SystemExit(main())
