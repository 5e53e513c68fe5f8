"""The training loop: procedural batches (or a folder's, see folder_data), AdamW with
warm-up and cosine decay, periodic evaluation, a JSONL log, and checkpoints that resume
exactly.

Batch s is examples s*B .. (s+1)*B - 1 of an endless, seeded stream of scenes, so a
resumed run sees the same batches as an uninterrupted one; dropout's generator,
the optimizer's moments and the schedule's step travel in the checkpoint too.

A step whose loss or gradient norm (the one clipping computes) is NaN or inf is not
applied: training stops with NonFiniteError naming the step, the last good checkpoint
stays `latest`; with skip_nonfinite N, up to N such steps are skipped instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import random
from ..autograd import AnomalyError, Tensor, detect_anomaly, no_grad
from ..data import (
    IGNORE_INDEX,
    Batch,
    SceneDataset,
    Tokenizer,
    collate,
    default_tokenizer,
    get_language,
)
from ..data.stream import BatchBuilder, TrainingStream, stream_batches
from ..models import VLM
from ..optim import AdamW, FlatAdamW, WarmupCosine, clip_grad_norm_
from . import run_folder
from .augment import AttributeCorruption, GreyscaleCaptions
from .checkpoint import (
    NonFiniteError,
    latest_checkpoint,
    load_training_state,
    save_training_checkpoint,
)
from .config import LOSS_WEIGHTINGS, TrainConfig, data_workers_for
from .distributed import (
    FlatGradients,
    ProcessGroup,
    RankTimeout,
    SingleProcess,
    process_group,
)
from .folder_data import FolderSplit, FolderStream, folder_tokenizer
from .graph_step import FixedShapes, GraphedStep
from .prefetch import Prefetcher, prefetch_to


def sequence_loss(
    model: VLM, images, inputs, targets, device: str = "cpu", weights: np.ndarray | None = None
) -> Tensor:
    """The model's loss (`VLM.forward` with targets: models.next_token_loss) on host
    arrays: cross-entropy over the targets (B, T) that are not IGNORE_INDEX, their mean,
    or with weights (B, T) that sum to 1 over them (see `target_weights`), their
    weighted sum."""
    _, loss = model(Tensor(images).to(device), inputs, targets, weights)
    return loss


def target_weights(
    targets: np.ndarray, answers: np.ndarray, weighting: str = "token", answer_weight: float = 1.0
) -> np.ndarray:
    """(B, T) weights summing to 1 over the trained targets, 0 elsewhere.

    A trained target weighs 1, an answer's (answers (B, T) True) answer_weight. Then
    "token" normalises over the whole batch; "sequence" normalises each row and
    gives the rows equal shares, so a one-word answer weighs as much as a caption.
    Per token, a batch's few answer words are drowned out by its captions' words.
    """
    weights, total = weight_shares(targets, answers, weighting, answer_weight)
    return weights / max(total, np.finfo(np.float64).tiny)


def weight_shares(
    targets: np.ndarray, answers: np.ndarray, weighting: str = "token", answer_weight: float = 1.0
) -> tuple[np.ndarray, float]:
    """target_weights before the batch's normalisation: (B, T) weights and the total
    they are divided by (the weighted token count, or with "sequence" the rows that
    have a target). Totals of several ranks' rows add up to the whole batch's."""
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(
            f"target_weights weighting: expected one of {LOSS_WEIGHTINGS}, got {weighting!r}"
        )
    raw = np.where(answers, answer_weight, 1.0) * (targets != IGNORE_INDEX)  # (B, T)
    if weighting == "token":
        return raw, float(raw.sum())
    per_row = raw.sum(axis=1, keepdims=True)  # (B, 1)
    return raw / np.maximum(per_row, np.finfo(np.float64).tiny), float((per_row > 0).sum())


def length_groups(lengths: np.ndarray) -> list[np.ndarray]:
    """Rows (B,) of a padded batch split in two by length, so that running each group
    padded only to its own longest row costs least: sum over groups of rows x width.

    A batch of captions and described questions is two batches in one (about 30 and
    45-75 tokens); padding the captions to the questions' width wastes a third of
    the decoder's work. Each row's loss depends on its own tokens only (causal
    attention, per-token norms), so the groups' gradients add up to the whole batch's.
    A second pass has its own fixed costs, so the batch is split only when that saves
    at least a tenth of the padded positions.
    """
    order = np.argsort(lengths, kind="stable")  # rows, shortest first
    ordered = lengths[order]  # (B,)
    n = len(order)
    # cost of cutting after the first `cut` rows: cut * their longest + rest * longest
    cuts = np.arange(1, n)
    costs = cuts * ordered[cuts - 1] + (n - cuts) * ordered[-1]
    if n < 2 or costs.min() > 0.9 * n * ordered[-1]:
        return [order]
    cut = int(cuts[np.argmin(costs)])
    return [order[:cut], order[cut:]]


@dataclass(frozen=True)
class StepPart:
    """One length group of a step's rows, cut to its own longest row: one forward pass."""

    images: np.ndarray  # (G, 3, S, S) float32
    inputs: np.ndarray  # (G, W) int64: the decoder's input, attribute words corrupted
    targets: np.ndarray  # (G, W) int64, IGNORE_INDEX where nothing is trained
    weights: np.ndarray  # (G, W) float64: loss weights before the batch's normalisation


@dataclass(frozen=True)
class StepInputs:
    """What train_step reads of this rank's rows of batch `step`, the host's work on them
    done (augmented, weighed, split into length groups). The parts' arrays are NumPy's
    or, handed out by a GPU run's prefetcher, CuPy's; `total` (the weight total of these
    rows, see weight_shares) stays a float on the host."""

    step: int
    parts: tuple[StepPart, ...]
    total: float

    def map_arrays(self, function: Callable) -> StepInputs:
        """A copy with `function` applied to every array of every part."""
        parts = tuple(
            StepPart(*(function(getattr(part, f.name)) for f in dataclasses.fields(StepPart)))
            for part in self.parts
        )
        return dataclasses.replace(self, parts=parts)


@dataclass(frozen=True)
class StepPreparation:
    """A batch's host work before a step, a pure function of (batch, step, rows), so
    data workers do it ahead of the step (see PreparedStream). rows: where the batch's
    rows sit in the global batch (None: it is the whole batch)."""

    corruption: AttributeCorruption
    greyscale: GreyscaleCaptions | None
    loss_weighting: str
    answer_weight: float
    fixed: FixedShapes | None = None  # a captured step's one part of a few shapes

    def __call__(self, batch: Batch, step: int, rows: np.ndarray | None = None) -> StepInputs:
        # corruption reads which words are trained before greyscale drops colour targets
        inputs = self.corruption(batch.inputs, batch.targets, batch.answers, step, rows)
        if self.greyscale is not None:
            batch = self.greyscale(batch, step, rows)
        # the loss is normalised by the whole batch's total, known after the ranks' sum:
        # each rank's loss and gradients are divided by it once they are summed
        weights, total = weight_shares(
            batch.targets, batch.answers, self.loss_weighting, self.answer_weight
        )
        if self.fixed is not None:  # weights divided by the total here: it counts as 1
            arrays = (batch.images, inputs, batch.targets, weights)
            part = StepPart(*self.fixed.pad(*arrays, batch.lengths, total))
            return StepInputs(step, (part,), 1.0)
        parts = []
        for group in length_groups(batch.lengths):  # the loss a group of rows at a time
            width = int(batch.lengths[group].max())
            parts.append(
                StepPart(
                    batch.images[group],
                    inputs[group, :width],
                    batch.targets[group, :width],
                    weights[group, :width],
                )
            )
        return StepInputs(step, tuple(parts), total)


@dataclass(frozen=True)
class PreparedStream:
    """A training stream whose batch s comes out as the StepInputs of step s: what
    stream_batches' workers build, so that the training process only copies them."""

    stream: TrainingStream | FolderStream
    prepare: StepPreparation

    def batch(self, step: int, rows: np.ndarray | None = None) -> StepInputs:
        return self.prepare(self.stream.batch(step, rows), step, rows)


@dataclass
class Trainer:
    config: TrainConfig
    tokenizer: Tokenizer
    model: VLM
    optimizer: AdamW
    schedule: WarmupCosine
    step: int = 0
    skipped_steps: list[int] = field(default_factory=list)  # not applied: NaN or inf
    _folder: FolderSplit | None = None  # with config.data_dir, made on first use
    # the ranks training together (see distributed.py); SingleProcess when alone
    group: ProcessGroup = field(default_factory=SingleProcess)
    _gradients: FlatGradients | None = None  # with several ranks: the allreduce's buffer
    _graphed: GraphedStep | None = None  # with config.cuda_graph: the captured steps

    @classmethod
    def create(cls, config: TrainConfig, group: ProcessGroup | None = None) -> Trainer:
        group = group or SingleProcess()
        if config.batch_size % group.size:
            raise ValueError(
                f"TrainConfig.batch_size: expected a multiple of the {group.size} ranks, "
                f"got {config.batch_size}"
            )
        if group.size > 1 and config.detect_anomaly:
            raise ValueError(
                "TrainConfig.detect_anomaly: expected false with several ranks (a rank that "
                "stops on an op would leave the others waiting), got true"
            )
        if group.size > 1 and config.cuda_graph:
            raise ValueError(
                "TrainConfig.cuda_graph: expected false with several ranks (the captured "
                "step has no allreduce), got true"
            )
        random.manual_seed(config.seed)
        if config.data_dir:
            tokenizer = folder_tokenizer(config.data_dir, config.data.image_size)
            if tokenizer.vocab_size != config.model.vocab_size:
                raise ValueError(
                    f"TrainConfig.model.vocab_size: expected {tokenizer.vocab_size} (the "
                    f"vocabulary of {config.data_dir}'s texts), got {config.model.vocab_size}"
                )
        else:
            tokenizer = default_tokenizer(config.data)
        model = VLM(config.model)  # its vocab_size is the tokenizer's (TrainConfig checks)
        model.to(config.device)
        # a captured step needs the flat optimizer (its numbers in device tables)
        kind = FlatAdamW if config.cuda_graph else AdamW
        optimizer = kind(parameter_groups(model, config.weight_decay), lr=config.lr)
        schedule = WarmupCosine(optimizer, config.warmup_steps, config.steps, config.min_lr_ratio)
        return cls(config, tokenizer, model, optimizer, schedule, group=group)

    @property
    def folder(self) -> FolderSplit:
        """A folder run's rows, encoded by the trainer's tokenizer (a resumed run's is its
        checkpoint's)."""
        if self._folder is None or self._folder.tokenizer is not self.tokenizer:
            self._folder = FolderSplit.from_config(self.config, self.tokenizer)
        return self._folder

    def stream(self) -> TrainingStream | FolderStream:
        """The training batches; QA examples join after qa_start of the run."""
        c = self.config
        if c.data_dir:
            split = self.folder
            return FolderStream(
                split.train, split.train_rows, c.batch_size, c.seed, c.model.max_len + 1
            )
        return TrainingStream(
            c.data,
            self.tokenizer,
            c.batch_size,
            c.seed,
            c.task,
            c.qa_fraction,
            qa_start_step=int(c.qa_start * c.steps),
            qa_format=c.qa_format,
            questions_per_image=c.questions_per_image,
            max_len=c.model.max_len + 1,
        )

    def batch(self, step: int) -> Batch:
        """This rank's rows of batch `step` (all of them in one process)."""
        return self.stream().batch(step, self.my_rows())

    def train_step(
        self,
        batch: Batch | StepInputs,
        corruption: AttributeCorruption | None = None,
        greyscale: GreyscaleCaptions | None = None,
    ) -> float:
        """One update from this rank's rows of the global batch: a Batch (as `self.batch`
        gives it), augmented and split here by `corruption` and `greyscale`, or the
        StepInputs of this step (training_batches's, their arrays maybe on the device
        already). The gradient is the whole batch's loss's, summed over the ranks."""
        inputs = (
            batch if isinstance(batch, StepInputs) else self._prepared(batch, corruption, greyscale)
        )
        if inputs.step != self.step:
            raise ValueError(
                f"train_step batch: expected the inputs of step {self.step}, "
                f"got those of step {inputs.step}"
            )
        loss = self._graphed_step(inputs) if self.config.cuda_graph else self._update(inputs)
        self.schedule.step()
        self.step += 1
        return loss

    def _update(self, inputs: StepInputs) -> float:
        """The eager step: the parts' losses and gradients, the ranks' sum, clipping and
        the update; NonFiniteError (and no update) for a NaN or inf loss or norm."""
        self.model.train()
        if self.group.size > 1:  # dropout masks of this rank's rows, whatever P
            random.manual_seed([self.config.seed, self.step, self.group.rank])
        self.optimizer.zero_grad()
        loss, total = 0.0, inputs.total
        for part in inputs.parts:
            loss_part = sequence_loss(
                self.model, part.images, part.inputs, part.targets, self.config.device, part.weights
            )
            loss_part.backward()  # gradients add up across the groups
            loss += loss_part.item()
        if self.group.size > 1:  # sum the ranks' shares: the whole batch's
            loss, total = self._flat_gradients().allreduce(self.group, loss, total, self.step + 1)
        loss = self._normalise(loss, total)
        norm = clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise NonFiniteError(
                f"step {self.step + 1}: the loss is {loss} and the gradient norm {norm}"
            )
        self.optimizer.step()
        return loss

    def _graphed_step(self, inputs: StepInputs) -> float:
        """The step captured as a CUDA graph (graph_step.py), inputs of FixedShapes."""
        if self._graphed is None:
            self._graphed = GraphedStep(self.model, self.optimizer, self.config.grad_clip)
        try:
            return self._graphed(inputs)
        except NonFiniteError as error:
            raise NonFiniteError(f"step {self.step + 1}: {error}") from error

    def _prepared(
        self,
        batch: Batch,
        corruption: AttributeCorruption | None,
        greyscale: GreyscaleCaptions | None,
    ) -> StepInputs:
        if corruption is None:
            raise ValueError(
                "train_step corruption: expected an AttributeCorruption with a Batch, got None"
            )
        c = self.config
        prepare = StepPreparation(
            corruption, greyscale, c.loss_weighting, c.answer_weight, self._fixed_shapes()
        )
        return prepare(batch, self.step, self.my_rows())

    def _normalise(self, loss: float, total: float) -> float:
        """The loss, and in place every gradient, divided by the batch's weight total."""
        scale = 1 / max(total, np.finfo(np.float64).tiny)
        for param in self.model.parameters():
            if param.grad is not None:
                param.grad *= param.grad.dtype.type(scale)
        return loss * scale

    def share_weights(self) -> None:
        """Every rank's weights become rank 0's (they are already equal when all ranks
        started from one seed; this makes sure of it, and costs one broadcast)."""
        if self.group.size > 1:
            self._flat_gradients().broadcast_weights(self.group)

    def _flat_gradients(self) -> FlatGradients:
        if self._gradients is None:
            self._gradients = FlatGradients(list(self.model.parameters()))
        return self._gradients

    def preparation(self) -> StepPreparation:
        """The host work train_step needs done on each batch (see StepPreparation)."""
        c = self.config
        return StepPreparation(
            *self.augmentations(), c.loss_weighting, c.answer_weight, self._fixed_shapes()
        )

    def _fixed_shapes(self) -> FixedShapes | None:
        """With cuda_graph, the shapes the captured steps take; else None."""
        c = self.config
        return FixedShapes.for_model(c.model.max_len, c.model.vocab_size) if c.cuda_graph else None

    def augmentations(self) -> tuple[AttributeCorruption, GreyscaleCaptions]:
        """What train_step applies to each batch (rate 0: nothing)."""
        c = self.config
        words = _attribute_words(c.data.language)
        return (
            AttributeCorruption(self.tokenizer, words, c.corrupt_attributes, c.model.max_len + 1),
            GreyscaleCaptions(self.tokenizer, words["colour"], c.greyscale_captions, c.seed),
        )

    def my_rows(self) -> np.ndarray:
        """(B / P,) the rows of a global batch that this rank builds and trains on."""
        share = self.config.batch_size // self.group.size
        return np.arange(self.group.rank * share, (self.group.rank + 1) * share)

    def skip_step(self) -> None:
        """Move past a step whose update was not applied (its batch is consumed)."""
        self.optimizer.zero_grad()
        self.schedule.step()
        self.step += 1
        self.skipped_steps.append(self.step)

    def validation_losses(self) -> dict[str, float]:
        """Mean loss on fixed caption batches of fresh iid scenes and of held-out pairs;
        a folder run's on its first validation rows (none: no loss)."""
        c = self.config
        self.model.eval()
        if c.data_dir:
            batches = self.folder.val_batches(c.batch_size, c.eval_batches, c.model.max_len + 1)
            with no_grad():
                values = [
                    sequence_loss(self.model, b.images, b.inputs, b.targets, c.device).item()
                    for b in batches
                ]
            return {"val_loss": float(np.mean(values))} if values else {}
        losses = {}
        with no_grad():
            for split in ("iid", "heldout"):
                data = SceneDataset(
                    c.data,
                    split,
                    c.eval_batches * c.batch_size,
                    c.seed + 1,
                    task="caption",
                    tokenizer=self.tokenizer,
                )
                values = []
                for b in range(c.eval_batches):
                    batch = collate(
                        [data[i] for i in range(b * c.batch_size, (b + 1) * c.batch_size)]
                    )
                    values.append(
                        sequence_loss(
                            self.model, batch.images, batch.inputs, batch.targets, c.device
                        ).item()
                    )
                losses[f"{split}_loss"] = float(np.mean(values))
        return losses


def parameter_groups(model: VLM, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases, norms, embeddings and gates are not decayed."""
    decayed, plain = [], []
    for name, param in model.named_parameters():
        is_matrix = param.ndim == 2 and "embedding" not in name
        (decayed if is_matrix else plain).append(param)
    return [
        {"params": decayed, "weight_decay": weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]


def train(
    config: TrainConfig,
    resume: bool = False,
    stop_at: int | None = None,
    overwrite: bool = False,
    group: ProcessGroup | None = None,
) -> Trainer:
    """Train to config.steps (or to `stop_at`, as if interrupted there); returns the trainer.

    The run folder is locked for the run; a folder that holds a run already is refused
    unless `resume` (continue from its newest good checkpoint) or `overwrite` (replace it).
    Started by mpiexec, the ranks train together (see distributed.py; `group` None: the
    launcher's); rank 0 alone touches the run folder, but every rank reads a checkpoint
    to resume from.
    """
    group = group or process_group(config.device, config.rank_timeout)
    lead = group.rank == 0
    out = Path(config.out_dir)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
    with run_folder.RunLock(out) if lead else contextlib.nullcontext() as lock:
        if lead:
            run_folder.prepare(out, resume, overwrite, lock)
        group.barrier("the run folder's preparation by rank 0")
        trainer = Trainer.create(config, group)
        if resume:
            load_training_state(out, trainer, None if lead else lambda text: None)
        trainer.share_weights()
        if lead:
            run_folder.truncate_log(out, trainer.step)
        anomaly = detect_anomaly() if config.detect_anomaly else contextlib.nullcontext()
        with anomaly:
            try:
                _run(trainer, out, stop_at)
            except RankTimeout as error:
                group.abort(str(error))
    return trainer


def _run(trainer: Trainer, out: Path, stop_at: int | None) -> None:
    """The steps; rank 0 alone evaluates, logs, checkpoints and shows progress."""
    config, lead = trainer.config, trainer.group.rank == 0
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    started, samples = time.perf_counter(), 0
    outputs = (
        _lead_outputs(out, config, trainer.step, end)
        if lead
        else contextlib.nullcontext((None, None))
    )
    with training_batches(trainer, end) as batches, outputs as (log, bar):
        for inputs in batches:
            try:
                loss = trainer.train_step(inputs)
            except (NonFiniteError, AnomalyError) as error:
                if len(trainer.skipped_steps) >= config.skip_nonfinite:
                    raise _stopped(trainer, out, error) from error
                trainer.skip_step()
                loss = None
            samples += config.batch_size
            if not lead:
                continue
            rate = samples / (time.perf_counter() - started)
            record = {
                "step": trainer.step,
                "loss": loss,
                "lr": trainer.schedule.get_lr()[0],
                "samples_per_s": rate,
            }
            if loss is None:
                record["skipped"] = "non-finite loss or gradient"
            if trainer.step % config.eval_every == 0 or trainer.step == config.steps:
                record.update(trainer.validation_losses())
            evaluated = "iid_loss" in record or "val_loss" in record
            if trainer.step % config.log_every == 0 or evaluated or loss is None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if trainer.step % config.checkpoint_every == 0 or trainer.step == config.steps:
                save_training_checkpoint(out, trainer, config.keep_checkpoints)
            if bar is not None:  # redrawn by update() at most every mininterval seconds
                bar.set_postfix(
                    loss=f"{loss:.3f}" if loss is not None else "skipped",
                    samples_s=f"{rate:.0f}",
                    refresh=False,
                )
                bar.update(1)


@contextlib.contextmanager
def training_batches(trainer: Trainer, end: int) -> Iterator[Prefetcher]:
    """This rank's StepInputs from trainer.step to `end`, on the trainer's device, for a
    with block.

    With data workers (config.data_workers, "auto": data_workers_for) each is built and
    prepared whole in a worker process; without, in this process when asked for, and a
    rank of several builds its next batch while it waits for the others at the
    allreduce, until the block ends. On a GPU the next one's arrays are copied while a
    step runs (prefetch.py)."""
    config, start, rows = trainer.config, trainer.step, trainer.my_rows()
    prepared = PreparedStream(trainer.stream(), trainer.preparation())
    workers = data_workers_for(config.data_workers, config.device, trainer.group.local_size)
    builder = None
    if workers:
        host = stream_batches(prepared, start, end, workers, rows)
    else:
        builder = BatchBuilder(prepared.stream, start, end, rows)
        host = (prepared.prepare(batch, step, rows) for step, batch in enumerate(builder, start))
    builds_ahead = builder is not None and trainer.group.size > 1
    if builds_ahead:
        trainer.group.while_waiting = builder.build_one  # build ahead instead of idling
    batches = prefetch_to(config.device, host)
    try:
        yield batches
    finally:
        batches.close()  # stops the workers, if any
        if builder is not None:
            builder.close()
        if builds_ahead:
            trainer.group.while_waiting = None


@contextlib.contextmanager
def _lead_outputs(out: Path, config: TrainConfig, start: int, end: int):
    """Rank 0's log file (appended to) and progress bar (None without progress)."""
    bar = _progress(config, start, end)
    try:
        with open(out / run_folder.LOG_FILE, "a") as log:
            yield log, bar
    finally:
        if bar is not None:
            bar.close()


def _stopped(trainer: Trainer, out: Path, error: Exception) -> NonFiniteError:
    """The error a run stops with: the step, the cause and the checkpoint left latest."""
    try:
        kept = f"{latest_checkpoint(out).name} stays the latest checkpoint"
    except (FileNotFoundError, ValueError):
        kept = "no checkpoint was written"
    where = f"step {trainer.step + 1}: " if isinstance(error, AnomalyError) else ""
    hints = "" if trainer.config.detect_anomaly else "; --detect-anomaly names the op"
    return NonFiniteError(
        f"{where}{error}; training stopped, {kept} (a lower --lr may help{hints}; "
        f"--skip-nonfinite N skips up to N such steps)"
    )


def _attribute_words(language: str) -> dict[str, list[str]]:
    """The language's colour and shape words, as its captions spell them."""
    table = get_language(language)
    return {"colour": list(table.colours.values()), "shape": list(table.shapes.values())}


def _progress(config: TrainConfig, start: int, end: int):
    if not config.progress:
        return None
    from tqdm import tqdm

    # a redraw a step costs the step time: under mpiexec each one wakes the launcher,
    # which forwards rank 0's output (300 demo steps on 2 ranks: 5-7% longer)
    return tqdm(
        total=end, initial=start, desc="train", unit="step", dynamic_ncols=True, mininterval=1.0
    )
