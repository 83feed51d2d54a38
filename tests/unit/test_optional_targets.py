"""`optional: true` targets: llm_target_absent says whether the target was ever there."""

from exporter.observation import Observation, PollError, Readiness, Reason
from exporter.samples import target_samples
from exporter.state import TargetState
from tests.support.configs import load_target


def target(optional: bool):
    return load_target("vllm", "http://127.0.0.1:1", name="v", optional=optional)


def absent(state: TargetState):
    found = [value for key, _, _, value in target_samples(state, {}) if key == "target_absent"]
    return found[0] if found else None


def test_absent_until_it_answers_then_down_alerts_as_usual():
    state = TargetState(target(optional=True))
    state.record_failure(PollError(Reason.CONNECT, "connection refused"), 1.0, 0.01)
    assert absent(state) == 1.0  # nothing was ever there: no LLMTargetDown
    state.record_success(Observation(Readiness.READY), 2.0, 0.01)
    assert absent(state) == 0.0
    state.record_failure(PollError(Reason.CONNECT, "connection refused"), 3.0, 0.01)
    assert absent(state) == 0.0  # it was there: losing it is an outage


def test_an_engine_that_answers_badly_is_not_absent_and_required_targets_say_nothing():
    state = TargetState(target(optional=True))
    state.record_failure(PollError(Reason.HTTP_STATUS, "/metrics: HTTP 500"), 1.0, 0.01)
    assert absent(state) == 0.0  # something listens there: a broken engine pages
    required = TargetState(target(optional=False))
    required.record_failure(PollError(Reason.CONNECT, "connection refused"), 1.0, 0.01)
    assert absent(required) is None
