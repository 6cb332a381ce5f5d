import os

from hypothesis import settings

# Property tests run 300 examples each in `make test`; `make fuzz` runs the decoders far longer.
settings.register_profile("default", max_examples=300, deadline=None)
settings.register_profile("fuzz", max_examples=int(os.environ.get("FUZZ_EXAMPLES", "20000")), deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
