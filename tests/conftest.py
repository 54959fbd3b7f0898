"""Hypothesis profiles: ``ci`` is derandomized (a fixed seed) so a CI run is reproducible; ``dev``
draws fresh examples each run. ``.ci/run`` and the README select ``ci`` with
``--hypothesis-profile=ci``."""
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("dev", max_examples=100, deadline=None, print_blob=True)
settings.load_profile("dev")
