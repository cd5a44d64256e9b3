"""CoDE library: paths, block decomposition, links, training with frozen blocks,
the throughput/reward/cost formulas against hand-computed values, and Algorithm 1."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from splitdnn.coordination import (
    CoordinationError,
    FrozenParameterChanged,
    Path,
    enumerate_paths,
    parse_path,
    skip_path,
)
from splitdnn.coordination.blocks import decompose
from splitdnn.coordination.compose import PathModel, parameter_budget
from splitdnn.coordination.data import Task
from splitdnn.coordination.links import make_link, parameter_count
from splitdnn.coordination.search import (
    Objective,
    code_search,
    compare,
    exhaustive_search,
    predict_accuracy,
    table_evaluator,
)
from splitdnn.coordination.throughput import (
    BlockTimes,
    CostWeights,
    StreamSetting,
    average_accuracy,
    path_cost,
    path_delay,
    path_throughput,
    reward,
)
from splitdnn.coordination.training import TrainingConfig, mean_loss, state_snapshot, train_links

# --- paths -----------------------------------------------------------------------------------


def test_paths_enumerate_every_valid_cross_and_skip_path() -> None:
    paths = enumerate_paths(4, 4)
    cross = [p for p in paths if not p.is_skip]
    assert len(cross) == 6 * 10  # C(4, 2) (lout, lin) pairs times 10 (hin <= hout) pairs
    assert len(paths) - len(cross) == 6
    assert len(set(paths)) == len(paths)
    for path in cross:
        assert 0 <= path.lout < path.lin < 4 and 0 <= path.hin <= path.hout < 4
    assert enumerate_paths(3, 1, skip=False) == [Path(0, 0, 0, 1), Path(0, 0, 0, 2),
                                                 Path(1, 0, 0, 2)]


@pytest.mark.parametrize(("values", "message"), [
    ([2, 0, 0, 2], "lout < lin"),
    ([0, 0, 0, 4], "lin < N_l=4"),
    ([0, 2, 1, 3], "hin <= hout < N_h=3"),
    ([0, 0, 3, 3], "hin <= hout < N_h=3"),
    ([0, 1, 2], "expected [lout, hin, hout, lin]"),
])
def test_invalid_paths_are_rejected_naming_the_bound(values: list[int], message: str) -> None:
    with pytest.raises(CoordinationError, match=re_escape(message)):
        parse_path(values, 4, 3)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_skip_paths_are_local_only_and_far_from_cross_paths() -> None:
    skip = parse_path([0, 3], 4, 3)
    assert skip.is_skip and skip == skip_path(0, 3)
    assert list(skip.skipped_local_blocks()) == [1, 2]
    trained = [_evaluation_stub(Path(0, 1, 1, 3), 0.9), _evaluation_stub(skip, 0.1)]
    # The skip path sits ~1000 away in r_p space, so it barely moves a cross prediction.
    assert predict_accuracy(Path(0, 1, 2, 3), trained, prior=1.0) == pytest.approx(0.9, abs=1e-3)


# --- blocks and links ------------------------------------------------------------------------


def small_cnn(channels: int = 8, classes: int = 3, norm: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Conv2d(1, channels, 3, padding=1)]
    if norm:
        layers.append(nn.BatchNorm2d(channels))
    layers += [nn.ReLU(), nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
               nn.MaxPool2d(2), nn.Conv2d(2 * channels, 2 * channels, 3, padding=1), nn.ReLU(),
               nn.Flatten(1), nn.Linear(2 * channels * 16, 16), nn.ReLU(),
               nn.Linear(16, classes)]
    return nn.Sequential(*layers).eval()


def test_decompose_chains_to_the_model_and_balances_units() -> None:
    model = small_cnn()
    blocked = decompose(model, 3, (1, 8, 8), "small")
    assert len(blocked) == 3
    # 5 compute units (a conv or linear with the layers behind it) into 2 + 2 + 1
    assert [len(list(b.children())) for b in blocked.blocks] == [5, 5, 1]
    assert blocked.block_inputs[0] == (1, 8, 8) and blocked.block_outputs[-1] == (3,)
    assert blocked.block_outputs[0] == blocked.block_inputs[1] == (16, 4, 4)
    x = torch.rand(5, 1, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(blocked.forward_range(x, 0, 2), model(x))
    assert all(not p.requires_grad for p in blocked.blocks.parameters())


def test_decompose_rejects_too_many_blocks_and_unsplittable_models() -> None:
    with pytest.raises(CoordinationError, match=r"divides into 1\.\.5 blocks, not 9"):
        decompose(small_cnn(), 9, (1, 8, 8), "small")

    class Custom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    with pytest.raises(CoordinationError, match="cannot divide into sequential blocks"):
        decompose(Custom(), 2, (1, 8, 8), "custom")


def test_decompose_torchvision_resnet_and_reject_a_mismatching_family() -> None:
    import torchvision

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None, num_classes=10)
    blocked = decompose(resnet, 4, (3, 32, 32), "torchvision:resnet18")
    assert blocked.block_outputs[-1] == (10,)
    # SqueezeNet's classifier pools itself: chaining features/pool/flatten/classifier fails.
    squeezenet = torchvision.models.squeezenet1_1(weights=None, num_classes=10)
    with pytest.raises(CoordinationError, match="cannot be divided into blocks"):
        decompose(squeezenet, 2, (3, 64, 64), "torchvision:squeezenet1_1")


@pytest.mark.parametrize(("source", "target"), [
    ((16, 8, 8), (48, 4, 4)),   # channels and spatial size shrink
    ((48, 4, 4), (64, 8, 8)),   # spatial size grows
    ((64, 8, 8), (128,)),       # feature map into a vector
    ((128,), (24, 8, 8)),       # vector into a feature map
    ((384,), (128,)),           # vector to vector
])
@pytest.mark.parametrize("architecture", ["conv", "bottleneck", "reduced"])
def test_links_adapt_mismatched_shapes(source: tuple[int, ...], target: tuple[int, ...],
                                       architecture: str) -> None:
    width = 5 if architecture == "reduced" else None
    link = make_link(source, target, architecture, width)  # type: ignore[arg-type]
    out = link(torch.rand(2, *source))
    assert tuple(out.shape) == (2, *target)


def test_equal_shapes_get_a_bottleneck_and_reduced_links_are_smaller() -> None:
    equal = make_link((64, 4, 4), (64, 4, 4))
    convs = [m for m in equal.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == \
        [(64, 16, (1, 1)), (16, 64, (3, 3))]
    plain = make_link((32, 8, 8), (64, 8, 8))
    assert [type(m) for m in plain] == [nn.Conv2d]
    reduced = make_link((32, 8, 8), (64, 8, 8), "reduced", 4)
    assert parameter_count(reduced) < parameter_count(plain) / 5


def test_link_errors_name_the_field() -> None:
    with pytest.raises(CoordinationError, match="link width"):
        make_link((8, 4, 4), (8, 4, 4), "reduced")
    with pytest.raises(CoordinationError, match="link width"):
        make_link((8, 4, 4), (8, 4, 4), "conv", 3)
    with pytest.raises(CoordinationError, match="link architecture"):
        make_link((8, 4, 4), (8, 4, 4), "mlp")  # type: ignore[arg-type]
    with pytest.raises(CoordinationError, match=r"\(C, H, W\)"):
        make_link((8, 4), (8, 4, 4))


# --- composed path and training --------------------------------------------------------------


def synthetic_task(samples: int = 192, classes: int = 3) -> Task:
    """Noisy images whose class is their brightness level: learnable, offline, tiny."""
    generator = torch.Generator().manual_seed(1)
    y = torch.randint(0, classes, (samples,), generator=generator)
    x = torch.rand(samples, 1, 8, 8, generator=generator) * 0.5 + 0.4 * y[:, None, None, None]
    cut = samples * 3 // 4
    return Task("brightness", x[:cut], y[:cut], x[cut:], y[cut:], classes)


@pytest.fixture(scope="module")
def models() -> tuple[object, object]:
    local = decompose(small_cnn(8, norm=True), 4, (1, 8, 8), "local")
    host = decompose(small_cnn(12), 3, (1, 8, 8), "host")
    return local, host


def test_path_model_runs_host_blocks_between_local_head_and_tail(models: tuple) -> None:
    local, host = models
    model = PathModel(local, host, Path(0, 1, 2, 3))
    assert tuple(model(torch.rand(2, 1, 8, 8)).shape) == (2, 3)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in model.links.parameters()}
    budget = parameter_budget(local, host, model)
    assert budget.skipped_local == local.parameters_in(range(1, 3))
    assert budget.host_blocks == host.parameters_in(range(1, 3))
    assert budget.added_host == budget.link + budget.host_blocks
    with pytest.raises(CoordinationError, match="hin <= hout < N_h=3"):
        PathModel(local, host, Path(0, 1, 3, 3))


def test_training_lowers_the_loss_and_leaves_frozen_blocks_unchanged(models: tuple) -> None:
    local, host = models
    task = synthetic_task()
    model = PathModel(local, host, Path(0, 0, 0, 3))
    frozen_before = state_snapshot(model.frozen_modules())
    links_before = state_snapshot(model.links)
    loss_before = mean_loss(model.eval(), task.x_train, task.y_train, task.num_classes)
    result = train_links(model, task, TrainingConfig(epochs=5, learning_rate=3e-2))
    loss_after = mean_loss(model.eval(), task.x_train, task.y_train, task.num_classes)
    assert loss_after < 0.7 * loss_before
    assert result.losses[0] == pytest.approx(loss_before)
    after = model.frozen_modules().state_dict()
    # Every parameter and buffer, including the batch-norm running statistics, is bit-equal.
    assert any("running_mean" in name for name in frozen_before)
    assert all(torch.equal(after[name], value) for name, value in frozen_before.items())
    assert any(not torch.equal(model.links.state_dict()[n], v) for n, v in links_before.items())


class CountingLayer(nn.Module):
    """Identity that counts its calls in a buffer: a block that changes state as it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x


def test_training_detects_a_block_that_changed() -> None:
    model = small_cnn(8)
    layers = list(model)
    stateful = nn.Sequential(*layers[:2], CountingLayer(), *layers[2:])
    local = decompose(stateful, 3, (1, 8, 8), "stateful")
    path_model = PathModel(local, None, skip_path(1, 2))
    with pytest.raises(FrozenParameterChanged, match=r"changed frozen .*calls"):
        train_links(path_model, synthetic_task(48), TrainingConfig(epochs=1))


def test_training_refuses_unfrozen_blocks(models: tuple) -> None:
    local, host = models
    model = PathModel(local, host, skip_path(1, 3))
    parameter = next(model.head.parameters())
    parameter.requires_grad_(True)
    try:
        with pytest.raises(CoordinationError, match="not frozen"):
            train_links(model, synthetic_task(48), TrainingConfig(epochs=1))
    finally:
        parameter.requires_grad_(False)


# --- throughput, reward, cost ----------------------------------------------------------------


def linear_times(local_ms: list[float], host_ms: list[float], link_ms: dict[Path, float],
                 batches: tuple[int, ...] = (8, 24, 32)) -> BlockTimes:
    """Block times proportional to the batch: ``ms`` per sample."""
    return BlockTimes(
        local=[{b: ms * b / 1e3 for b in batches} for ms in local_ms],
        host=[{b: ms * b / 1e3 for b in batches} for ms in host_ms],
        links={path: ms / 1e3 for path, ms in link_ms.items()})


SETTING = StreamSetting(local_batch=32, host_batch=32, offloaded=8)


def test_throughput_average_accuracy_and_reward_by_hand() -> None:
    path = Path(0, 1, 2, 3)
    times = linear_times([1, 2, 3, 4], [1, 1, 1, 1], {path: 2.0})
    th = path_throughput(path, times, SETTING)
    # Th_0 = 32 / (32 * 10 ms) = 100/s
    assert th.baseline == pytest.approx(100.0)
    # T_L = 24 * 10 ms + 8 * (1 + 4) ms = 280 ms; T_H = 24 * 4 + 8 * 2 + 2 = 114 ms
    assert th.local_seconds == pytest.approx(0.280)
    assert th.host_seconds == pytest.approx(0.114)
    assert th.local_stream == pytest.approx(24 / 0.280)
    assert th.host_stream == pytest.approx(8 / 0.280)
    assert th.total == pytest.approx(32 / 0.280)
    assert th.gain == pytest.approx(32 / 0.280 - 100)
    a_av = average_accuracy(th, 0.9, 0.8)
    assert a_av == pytest.approx((24 * 0.9 + 8 * 0.8) / 32)  # 0.875
    expected = 1 / (1 + math.exp(-10 * (0.875 - 0.85))) * (32 / 0.280 - 100)
    assert reward(a_av, th.gain, a_min=0.85, k=10) == pytest.approx(expected)
    assert expected == pytest.approx(8.0311, abs=1e-4)


def test_a_slow_host_paces_the_offloaded_stream() -> None:
    path = Path(0, 1, 2, 3)
    th = path_throughput(path, linear_times([1, 2, 3, 4], [10, 10, 10, 10], {path: 2.0}),
                         SETTING)
    # T_H = 24 * 40 + 8 * 20 + 2 = 1122 ms > T_L = 280 ms
    assert th.host_seconds == pytest.approx(1.122)
    assert th.host_stream == pytest.approx(8 / 1.122)
    assert th.total < th.baseline


def test_skip_path_runs_its_link_locally() -> None:
    path = skip_path(0, 3)
    th = path_throughput(path, linear_times([1, 2, 3, 4], [1], {path: 1.0}), SETTING)
    assert th.local_seconds == pytest.approx(0.281) and th.host_seconds == 0
    assert th.host_stream == pytest.approx(8 / 0.281)


def test_paper_001_cost_by_hand() -> None:
    path = Path(0, 1, 2, 3)
    times = linear_times([1, 2, 3, 4], [1, 1, 1, 1], {path: 2.0})
    delay = path_delay(path, times, SETTING, transfer_seconds=0.0005)
    assert delay.local == pytest.approx(0.005)          # (1 + 4) ms per sample
    assert delay.host == pytest.approx(0.00225)         # (1 + 1) ms + 2 ms / 8 samples
    assert delay.communication == pytest.approx(0.001)  # there and back
    weights = CostWeights(accuracy=1.0, communication=1.0, local=1.0, host=0.5)
    assert path_cost(delay, 0.9, 0.8, weights) == pytest.approx(0.1 + 1 + 5 + 1.125)
    bounded = CostWeights(max_delay=0.008)
    assert path_cost(delay, 0.9, 0.8, bounded) == math.inf


def test_stream_setting_rejects_more_offloaded_samples_than_a_batch() -> None:
    with pytest.raises(CoordinationError, match="s: offloaded samples"):
        StreamSetting(local_batch=8, host_batch=32, offloaded=9)


# --- search ----------------------------------------------------------------------------------


def _evaluation_stub(path: Path, accuracy: float) -> object:
    from splitdnn.coordination.search import Evaluation

    return Evaluation(path, accuracy, None, accuracy, None, 0.0)  # type: ignore[arg-type]


def test_inverse_distance_prediction_by_hand() -> None:
    trained = [_evaluation_stub(Path(0, 1, 1, 2), 0.9), _evaluation_stub(Path(0, 1, 3, 2), 0.6)]
    # distances 1 and 1 from [0, 1, 2, 2]: plain mean; from [0, 1, 1, 3]: 1 and sqrt(5)
    assert predict_accuracy(Path(0, 1, 2, 2), trained, 1.0) == pytest.approx(0.75)
    w1, w2 = 1.0, 1 / math.sqrt(5)
    assert predict_accuracy(Path(0, 1, 1, 3), trained, 1.0) == \
        pytest.approx((w1 * 0.9 + w2 * 0.6) / (w1 + w2))
    assert predict_accuracy(Path(0, 1, 1, 3), [], 0.97) == 0.97


def synthetic_problem(local_blocks: int = 6, host_blocks: int = 6):  # type: ignore[no-untyped-def]
    """Block times and a smooth accuracy table: more host blocks help, skipping hurts."""
    paths = enumerate_paths(local_blocks, host_blocks)
    links = {p: 0.3 for p in paths}
    times = linear_times([0.5, 3, 3, 2, 1, 0.2][:local_blocks], [1.0] * host_blocks, links)
    throughputs = [path_throughput(p, times, SETTING) for p in paths]
    accuracies = {}
    for p in paths:
        skipped = p.lin - p.lout - 1
        borrowed = 0 if p.is_skip else p.hout - p.hin + 1
        fit = 0 if p.is_skip else abs(p.hin - p.lout - 1)
        accuracies[p] = max(0.1, 0.95 - 0.08 * skipped + 0.05 * min(borrowed, skipped)
                            - 0.03 * fit - 0.001 * p.hout)
    return throughputs, accuracies


def test_algorithm_1_terminates_and_finds_the_exhaustive_optimum() -> None:
    throughputs, accuracies = synthetic_problem()
    objective = Objective(main_accuracy=0.95, a_min=0.9, k=50)
    evaluate = table_evaluator(accuracies)
    exhaustive = exhaustive_search(throughputs, evaluate, objective)
    search = code_search(throughputs, evaluate, objective, c_stop=3, epsilon=0.01)
    comparison = compare(search, exhaustive)
    assert exhaustive.trainings == exhaustive.candidates > 50
    assert comparison.found_optimum and comparison.reward_gap == 0.0
    assert search.best is not None and exhaustive.best is not None
    assert search.best.path == exhaustive.best.path
    assert search.trainings < exhaustive.trainings / 2
    assert "stages without an improvement" in search.stopped
    assert len({e.path for e in search.trained}) == search.trainings


def test_algorithm_1_reports_the_gap_when_it_stops_early() -> None:
    throughputs, accuracies = synthetic_problem()
    objective = Objective(main_accuracy=0.95, a_min=0.9, k=50)
    evaluate = table_evaluator(accuracies)
    exhaustive = exhaustive_search(throughputs, evaluate, objective)
    # A huge epsilon counts every stage as "no improvement": c_stop stages, then stop.
    search = code_search(throughputs, evaluate, objective, c_stop=2, epsilon=1e9)
    assert search.trainings == 2
    comparison = compare(search, exhaustive)
    assert search.best is not None and exhaustive.best is not None
    assert comparison.reward_gap == pytest.approx(exhaustive.best.reward - search.best.reward)
    assert comparison.found_optimum == (comparison.reward_gap == 0.0)
    assert comparison.reward_gap > 0


def test_search_without_candidates_keeps_the_main_path() -> None:
    path = Path(0, 0, 0, 1)
    slow = path_throughput(path, linear_times([1, 1], [50], {path: 5.0}), SETTING)
    assert slow.total < slow.baseline
    result = code_search([slow], table_evaluator({}), Objective(0.9, 0.8, 10))
    assert result.best is None and result.trainings == 0
    assert "no path beats" in result.stopped
    with pytest.raises(CoordinationError, match="c_stop"):
        code_search([slow], table_evaluator({}), Objective(0.9, 0.8, 10), c_stop=0)
