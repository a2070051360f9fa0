"""Install nanopilot into a Bluesky session: live analysis, texture labels, live maps, Tiled storage.

    >>> from nanopilot.session import setup
    >>> np_session = setup(RE, detector=det, x=stage.x, y=stage.y)      # a beamline profile, real devices
    >>> RE(steered_map([det], stage.x, stage.y, (-2, 2), (-2, 2)))       # plans ask the RunEngine for the maps
    >>> np_session.close()                                               # unsubscribe, finish the analysis
    >>> setup(RE, detector=det, x=stage.x, y=stage.y, analysis="remote",  # `nanopilot worker` processes analyse
    ...       remote=RemoteOptions(on_failure="fallback"))                # (docs/remote_analysis.md)

Each plan returns once the analysis of its run has ended (its analysis and texture runs stopped), so a queue
server may close the environment right after it; ``examples/queueserver/startup.py`` is a startup file for
``start-re-manager``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

from .callbacks import LiveMaps, NanobeamAnalysis
from .callbacks.worker import at_interpreter_exit
from .plans.common import MAPS_COMMAND

if TYPE_CHECKING:
    from .pictures import LivePictures

logger = logging.getLogger(__name__)
_open_sessions: weakref.WeakSet = weakref.WeakSet()  # closed at interpreter exit (see _close_at_exit)
_exit_hook = threading.Lock()
_exit_hook_registered = False


@dataclasses.dataclass(eq=False)
class Session:
    """What :func:`setup` installed: the analysis, its LiveMaps, the texture callback, the plot, the catalogue,
    the RunEngine subscription tokens (``RE.unsubscribe(token)`` removes one), the devices it was given
    ({"detector", "x", "y"[, "temperature", "deposition"]: device}, for plans: ``s.devices["x"]``) and the
    RunEngine. :meth:`close` (or leaving ``with setup(...) as s:``) tears it all down; a session still open when
    the interpreter exits (a queue-server environment closing) is closed then."""

    analysis: NanobeamAnalysis
    maps: LiveMaps
    texture: object
    plot: LivePictures | None
    catalog: object | None
    tokens: list[int]
    devices: dict
    RE: object = None
    closed: bool = False
    #: The link to the remote workers (:class:`nanopilot.remote.link.RemoteLink`) with ``analysis="remote"``.
    remote: object = None

    async def _answer_maps(self, msg) -> LiveMaps | None:
        """The RunEngine's answer to a plan's :data:`~nanopilot.plans.common.MAPS_COMMAND` message."""
        return None if self.closed else self.maps

    def close(self, timeout: float = 60.0) -> bool:
        """Unsubscribe from the RunEngine, finish the analysis of every frame it was handed (its documents
        reach the catalogue) and stop its worker; the RunEngine then answers plans that ask for the maps with
        none (see :func:`setup`). Call it between runs.

        Every analysis run (and its texture run) then has its stop document: one whose raw run is still open ends
        with exit_status "abort", one the analysis could not finish within ``timeout`` (s) with "fail", each with
        the reason (see :meth:`NanobeamAnalysis.close`). Idempotent; False if the analysis did not finish in time.
        """
        _open_sessions.discard(self)
        if self.RE is not None:
            for token in self.tokens:
                self.RE.unsubscribe(token)
        self.tokens = []
        if self.remote is not None:
            self.remote.close()
        finished = self.analysis.close(timeout)
        if self.plot is not None:
            self.plot.close()
        self.closed = True
        return finished

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def setup(RE, *, detector, x, y, temperature=None, deposition=None, catalog=None, model=None,
          plot: str | Path | None = None, image_key: str | None = None, mask=None, preparation=None,
          analysis: str = "local", remote=None) -> Session:
    """Subscribe the live analysis (and texture labels) to ``RE``, and make ``RE`` answer the plans that ask for the
    LiveMaps (:func:`nanopilot.plans.common.resolve_maps`) with this session's, until it is closed.

    Parameters
    ----------
    RE : the RunEngine of the session.
    detector : the nanobeam area detector; x, y : the sample stage motors (um).
    temperature, deposition : optional temperature controller and deposition source (for the plans).
    catalog : a Tiled catalogue (``nanopilot.catalog.open_catalog()``), a location string, or None (no storage).
        Raw runs, analysis runs and texture runs are written there, behind a backup journal
        (:func:`nanopilot.storage.make_writer`); each analysis run's stop says where its raw run was stored.
    model : model file for the analysis (default: the shipped ensemble; use the thickness model for growth).
    plot : PNG path of each run's picture (:class:`nanopilot.pictures.LivePictures`: the plan's story, redrawn live),
        saved when the run's analysis has ended (``{uid}`` is replaced); None: no picture.
    image_key : the detector's image data key, when it cannot be found from the descriptors.
    mask : the detector pixels the analysis ignores (an (H, W) array or a file: ``.npy``, a NeXus ``pixel_mask``, a
        mask image; see :func:`nanopilot.model.bad_pixels.load_mask`).
    preparation : the detector's frame preparation (a :class:`nanopilot.physics.FramePreparation` or its YAML
        file): the analysis then takes the raw detector frames (ROI, binning, dark, flat, gain, masks, orientation).
    analysis : "local" (default): the analysis runs in this process; "remote": ``nanopilot worker`` processes
        analyse the RunEngine's documents and the maps are filled from their stream (docs/remote_analysis.md); the
        workers store the analysis and texture runs (``--catalog``), the session the raw runs. The model given here
        is the one the workers must use: it checks the detector, and it is the in-process fallback.
    remote : a :class:`nanopilot.remote.link.RemoteOptions` (default: its defaults): where the workers' proxies are,
        how many workers, what the plans do when they fail ("stop", "wait", "fallback").

    Raises
    ------
    ValueError, naming the differing fields, if the detector's ``instrument`` is not the one the model was made
    for, or if the preparation does not give the model's pixel size and ROI shape (before anything is subscribed);
    ValueError for an unknown ``analysis``; ConnectionError if the remote workers do not answer (nothing subscribed).
    """
    from .model import Predictor

    if analysis not in ("local", "remote"):
        raise ValueError(f"analysis must be 'local' or 'remote', got {analysis!r}")
    if analysis == "remote":
        from .remote.link import RemoteOptions

        remote = remote if remote is not None else RemoteOptions()
        remote.check()
    predictor = Predictor.load(model, mask=mask, preparation=preparation)
    _check_instrument(detector, predictor)
    if catalog is not None and isinstance(catalog, (str, Path)):
        from .catalog import open_catalog

        catalog = open_catalog(catalog, create=True)
    tokens = []
    local, texture = _in_process_analysis(RE, predictor, catalog, tokens, image_key, [y.name, x.name])
    link = None
    if analysis == "remote":
        from .remote.link import RemoteLink

        try:
            link = RemoteLink(RE, local.maps, remote, local=local)  # the RunEngine's documents go out through it
        except Exception:
            for token in tokens:
                RE.unsubscribe(token)
            local.close()
            raise
    live_plot = _live_pictures(RE, plot, local, texture, tokens, remote=link is not None)
    if link is None:
        tokens.append(RE.subscribe(local))
    devices = {"detector": detector, "x": x, "y": y, "temperature": temperature, "deposition": deposition}
    session = Session(local, local.maps, texture, live_plot, catalog, tokens,
                      {k: v for k, v in devices.items() if v is not None}, RE, remote=link)
    RE.register_command(MAPS_COMMAND, session._answer_maps)  # the plans' default maps: this RunEngine's session
    _close_at_exit(session)
    return session


def _in_process_analysis(RE, predictor, catalog, tokens: list, image_key, motors):
    """The in-process analysis with its texture stage, storing into ``catalog`` (when not None): the raw runs'
    writer is subscribed to ``RE`` now (its token appended to ``tokens``), first, so the raw run is stored when the
    analysis sees its stop and the analysis run can say where it went. Returns (analysis, texture)."""
    from .texture import TextureCallback, frame_descriptor

    raw_writer = None
    if catalog is not None:
        from .storage import make_writer

        # made (the catalogue checked writable) before anything is subscribed
        raw_writer = make_writer(catalog)
        derived_writers = make_writer(catalog, batch_size=1000), make_writer(catalog, batch_size=1000)
        tokens.append(RE.subscribe(raw_writer))
    local = NanobeamAnalysis(predictor, image_key=image_key, motors=motors, frame_features=frame_descriptor,
                             raw_storage=raw_writer.status if raw_writer is not None else None)
    texture = TextureCallback()
    local.add_stage(texture)
    if catalog is not None:  # remote: the workers store theirs; these store the in-process fallback's
        local.subscribe(derived_writers[0])
        texture.subscribe(derived_writers[1])
    return local, texture


def _live_pictures(RE, plot, local, texture, tokens: list, remote: bool):
    """Each plan's picture (:mod:`nanopilot.pictures`), drawn from the raw, analysis and texture documents and saved
    at ``plot`` (None: no picture, returns None); with a remote analysis, the derived documents as the maps take
    them."""
    if not plot:
        return None
    from .pictures import LivePictures

    live_plot = LivePictures(save=plot)
    if remote:
        local.maps.subscribe(live_plot)
    else:
        local.subscribe(live_plot)
        texture.subscribe(live_plot)
    tokens.append(RE.subscribe(live_plot))
    return live_plot


def _close_at_exit(session: Session) -> None:
    """Close ``session`` as the interpreter exits, if it is still open then (a queue-server environment that
    closes, a script that ends without ``close()``), so that its analysis and texture runs end with stop documents.

    Registered after the analysis worker's own exit hook, so it runs first (see
    :func:`~nanopilot.callbacks.worker.at_interpreter_exit`).
    """
    global _exit_hook_registered
    _open_sessions.add(session)
    with _exit_hook:
        if not _exit_hook_registered:
            at_interpreter_exit(_close_open_sessions)
            _exit_hook_registered = True


def _close_open_sessions() -> None:
    for session in list(_open_sessions):
        if not session.close():
            logger.error("the nanopilot session's analysis did not finish as the interpreter exited")


def _check_instrument(detector, predictor) -> None:
    """Raise ValueError naming the differing fields if the detector declares another instrument than the model's."""
    instrument = getattr(detector, "instrument", None)
    if instrument is None:
        return
    try:
        predictor.instrument.require_same(instrument, f"the detector {getattr(detector, 'name', detector)!r}")
    except ValueError as err:
        raise ValueError(f"{err}; the model {predictor.path} was made for the expected values: pass model= a "
                         "model trained for the detector's instrument") from None
