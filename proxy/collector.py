"""Python's cyclic garbage collector, tuned for a server that has finished starting.

A request allocates a few hundred container objects and frees nearly all of them by reference
counting: a served process makes almost no cyclic garbage. Yet with the default thresholds
(700, 10, 10) the collector ran about once per 8 requests at 64 concurrent, because objects
of requests in flight count as new ones until they are freed, and every tenth of those passes
scanned the middle generation. About once a second a full pass walked every object the process
holds (modules, the catalog, routes: 27 ms each on the 2-core VM, a pause for every request in
flight). In all, 0.05 ms of CPU per 2 KB request.

So `serve` (and each worker) collects less often, and once the app has started it moves
everything alive into the collector's permanent generation (`gc.freeze`): full passes walk
only what was made since. Garbage cycles still go, only later; the collector stays on.
"""

from __future__ import annotations

import gc

# Net new container objects before a pass of the youngest generation (default 700): tens of
# requests' worth. The older generations are passed every 20 passes of the one below.
THRESHOLDS = (20_000, 20, 20)


def settle() -> None:
    """The app has started and is the whole process (`serve`, a worker; never a test's app
    in the test runner's process): collect less often from now on, and what is alive now,
    which lives as long as the process, leaves the collector's passes."""
    gc.set_threshold(*THRESHOLDS)
    gc.collect()
    gc.freeze()
