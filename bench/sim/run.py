"""Running a scenario with a set of knobs: the library's settings, changed only where asked."""

from __future__ import annotations

from p2p_shared.settings import DownloadSettings, ServingSettings

from .hosts import Knobs
from .report import summarize
from .scenarios import Scenario
from .simulation import Result, Simulation


def knobs(*, max_peers=None, depth=None, refresh=None, super_seed=True, offer_window=None, random_first=None,
          max_connections=None) -> Knobs:
    """The library's defaults (DownloadSettings, ServingSettings), with the changes given."""
    update = {k: v for k, v in (("max_peers", max_peers), ("pipeline_depth", depth), ("refresh_interval", refresh)) if v is not None}
    settings = DownloadSettings().model_copy(update=update)
    serving = ServingSettings()
    return Knobs(settings, max_connections=max_connections or serving.max_connections, super_seed=super_seed,
                 offer_window=offer_window, random_first=random_first)


def knobs_from(args) -> Knobs:
    return knobs(max_peers=args.max_peers, depth=args.depth, refresh=args.refresh, super_seed=not args.no_super_seed,
                 offer_window=args.offer_window, random_first=args.random_first, max_connections=args.max_connections)


def run_scenario(scenario: Scenario, with_knobs: Knobs | None = None, seed: int = 1, limit: float = 3600.0) -> tuple[dict, Result]:
    result = Simulation(scenario, with_knobs or knobs(), seed=seed).run(limit)
    return summarize(result), result
