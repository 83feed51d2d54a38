"""Each model keeps its own lifecycle history when a single-model engine is restarted with another model."""

from exporter.observation import ModelState, ModelStatus, Observation, PollError, Readiness, Reason
from exporter.samples import target_samples
from exporter.state import TargetState
from tests.support.configs import load_target


def loads(state: TargetState) -> dict[str, float]:
    return {
        labels["model"]: value
        for key, _, labels, value in target_samples(state, {})
        if key == "model_loads" and labels["kind"] == "start"
    }


def test_alpha_beta_alpha_keep_their_own_counts():
    target = load_target("llamacpp", "http://h:1")
    state = TargetState(target)
    t = 100.0
    for model in ("alpha", "beta", "beta", "alpha"):
        state.record_failure(PollError(Reason.CONNECT, "refused"), t, 0.01)
        t += 1
        state.record_success(
            Observation(Readiness.LOADING, lifecycle={"": ModelStatus(ModelState.LOADING, model=model)}), t, 0.01
        )
        t += 2
        state.record_success(
            Observation(Readiness.READY, lifecycle={"": ModelStatus(ModelState.LOADED, model=model)}), t, 0.01
        )
        t += 1
    assert loads(state) == {"alpha": 2, "beta": 2}
    durations = {
        labels["model"]: value
        for key, suffix, labels, value in target_samples(state, {})
        if key == "model_load_duration" and suffix == "_count"
    }
    assert durations == {"alpha": 2, "beta": 2}
    states = {
        (labels["model"], labels["state"])
        for key, _, labels, value in target_samples(state, {})
        if key == "model_state" and value == 1
    }
    assert states == {("alpha", "loaded")}  # only the model served now has a state


def test_a_load_that_fails_is_charged_to_the_model_being_loaded():
    target = load_target("llamacpp", "http://h:1")
    state = TargetState(target)
    state.record_success(
        Observation(Readiness.READY, lifecycle={"": ModelStatus(ModelState.LOADED, model="alpha")}), 1.0, 0.01
    )
    state.record_success(
        Observation(Readiness.LOADING, lifecycle={"": ModelStatus(ModelState.LOADING, model="beta")}), 2.0, 0.01
    )
    state.record_failure(PollError(Reason.CONNECT, "refused"), 3.0, 0.01)  # killed while loading
    failures = {
        labels["model"]: value for key, _, labels, value in target_samples(state, {}) if key == "model_load_failures"
    }
    assert failures == {"beta": 1, "alpha": 0}


def test_a_failed_load_is_logged_once_and_in_the_debug_events(caplog):
    import asyncio

    from exporter.poller import Poller
    from exporter.sources.base import Source

    steps: list[Observation | PollError] = [
        Observation(Readiness.LOADING, lifecycle={"": ModelStatus(ModelState.LOADING, model="beta")}),
        PollError(Reason.CONNECT, "refused"),
        PollError(Reason.CONNECT, "refused"),
    ]

    class Script(Source):
        async def collect(self) -> Observation:
            step = steps.pop(0)
            if isinstance(step, PollError):
                raise step
            return step

    target = load_target("llamacpp", "http://h:1")
    state = TargetState(target)
    poller = Poller(Script(target), state)
    for _ in range(3):
        asyncio.run(poller.poll())
    lines = [r.getMessage() for r in caplog.records if "failed to load" in r.getMessage()]
    assert lines == ["target t (llamacpp): model beta failed to load"]
    assert [text for _, text in state.events if "failed to load" in text] == ["model beta failed to load"]
