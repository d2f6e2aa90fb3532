from phase0_prototype.generate import main

raise SystemExit(main())
