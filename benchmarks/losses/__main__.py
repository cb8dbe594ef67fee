import sys

if "--step" in sys.argv[1:]:  # a full training step of examples/distill_torchvision.py (needs torchvision)
    from .step import main

    sys.exit(main([a for a in sys.argv[1:] if a != "--step"]))

from .harness import main

sys.exit(main())
