"""One group of v3_fast_train's fast engine: M jobs trained as one batched computation.

`TrainGroup` holds every weight, AdamW moment and best weight of its M models stacked along a
leading model axis, each model's `GroupSlot` (its place in the group, and the RunRecord of
v3_train_state that v3_trainer.train_model keeps too), the static per-batch tables, the training
step (captured in a CUDA graph on CUDA), one epoch with its validation pass, re-packing when
models finish, and each model's results in train_model's formats (TrainOutcome, the resume
state). After every epoch it keeps a device copy of its state (`saved`, what an interrupt
saves); `trial` runs the first steps of an epoch and puts everything back (v3_fast_check).
v3_fast_train groups the jobs and runs the groups; the kernels are v3_fast_kernels'.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from v3_common import log
from v3_fast_kernels import (block_layout, cosine_warm_restarts_lr, grouped_adamw_,
                             grouped_forward_with_quantiles, pack_states, pick_cell, unpack_state)
from v3_lstm_model import ModelConfig, V3LSTMModel, quantile_pinball
from v3_train_state import RunRecord
from v3_trainer import TrainJob, TrainOutcome

EVAL_ROWS = 4096              # validation windows per chunk, over all models of a group
GRAPH_WARMUP_STEPS = 2        # eager steps on a side stream before capture, as torch's docs do


@dataclass
class GroupSlot:
    """One job's place in a group, and its run's RunRecord (v3_train_state, as train_model's)."""
    job: TrainJob
    n_train: int
    n_batches: int
    n_val: int
    record: RunRecord
    has_best: bool = False
    finished: bool = False


@dataclass
class GroupState:
    """A group's training state at the end of an epoch: its slots (each with a copy of its
    record) and copies of its stacked blocks, on the device. TrainGroup.saved is the latest,
    what a KeyboardInterrupt saves: never the half-trained epoch."""
    slots: list[GroupSlot]
    blocks: dict                    # 'params', 'best', 'exp_avg', 'exp_avg_sq': {block: (M, ...)}
    steps: torch.Tensor             # (M,) AdamW steps


def _initial_state(job, cfg, cache: dict) -> dict:
    """The plain loop's initial weights: torch.manual_seed(seed), then V3LSTMModel(config)."""
    key = (job.model_config, cfg.seed)
    if key not in cache:
        torch.manual_seed(cfg.seed)
        cache[key] = {k: v.detach().clone() for k, v in V3LSTMModel(job.model_config).state_dict().items()}
    return cache[key]


def recover_from_failed_capture(device: torch.device, side, graph, label: str) -> None:
    """Put torch's CUDA state back after a failed capture, so eager steps (the fast engine's
    and the plain loop's) work again.

    When the capture is invalidated (a host sync, an op that cannot be captured), torch's
    CUDAGraph.capture_end raises at cudaStreamEndCapture, before it (1) tells the caching
    allocator to stop routing the capture's allocations to the graph's private pool and (2)
    takes the random generators out of capture mode. (2) is what breaks: every capture
    registers the device's default CUDA generator (whatever generator the captured ops
    use), and until a capture ends it raises "Offset increment outside graph capture
    encountered unexpectedly" at the next eager dropout. One trivial capture on the same
    stream that succeeds runs the generator's capture prologue and epilogue again and leaves
    it as it was before; (1) is undone directly, where this torch build offers it."""
    torch.cuda.synchronize(device)   # a warm-up step may still run on the side stream
    if graph is not None:
        try:  # the allocator's entry for the failed capture (a private torch API: best effort)
            torch._C._cuda_endAllocateToPool(device.index if device.index is not None
                                             else torch.cuda.current_device(), graph.pool())
        except Exception:  # noqa: BLE001  (already ended, or capture never began)
            pass
    try:
        probe = torch.zeros(1, device=device)
        stream = side if side is not None else torch.cuda.Stream(device)
        with torch.cuda.stream(stream):
            reset = torch.cuda.CUDAGraph()
            with torch.cuda.graph(reset, stream=stream):
                probe.add_(1)
        torch.cuda.current_stream(device).wait_stream(stream)
        del reset
    except Exception as e:  # noqa: BLE001  (captures do not work here at all)
        log.warning("%s: could not reset the CUDA generator after the failed capture (%s: %s); "
                    "dropout on this device may fail", label, type(e).__name__, str(e)[:200])
    torch.cuda.synchronize(device)


class TrainGroup:
    """M jobs trained together. Every per-model quantity is a tensor with a leading M axis."""

    def __init__(self, jobs: list, cfg, device: torch.device, *, use_graph: bool, label: str):
        self.cfg, self.device, self.label = cfg, device, label
        self.model_cfg: ModelConfig = jobs[0].model_config
        self.seq_len = int(jobs[0].data.seq_len)
        self.layout = block_layout(self.model_cfg)
        self.param_names = [n for names in self.layout.values() for n in names]
        self.cell = pick_cell(device)
        self.use_graph = use_graph and device.type == "cuda"
        self.graph = None
        self.saved: GroupState | None = None   # the state after the last finished epoch
        self.with_q = bool(self.model_cfg.quantiles)          # the quantile head
        self.q_weight = float(self.model_cfg.quantile_weight)
        self.q_levels = torch.tensor(self.model_cfg.quantiles, dtype=torch.float32, device=device)
        self.t_start = time.monotonic()
        init_cache: dict = {}
        states, best_states, opt_states = [], [], []
        self.slots: list[GroupSlot] = []
        for job in jobs:
            n_train, r = int(job.data.n_train), job.resume
            slot = GroupSlot(job=job, n_train=n_train, n_val=int(job.data.n_val),
                             n_batches=(n_train + cfg.batch_size - 1) // cfg.batch_size,
                             record=RunRecord.from_resume(r, t_start=self.t_start))
            if r:
                states.append(r["model_state"])
                opt_states.append(r.get("optimizer_state"))
                slot.has_best = r.get("best_state") is not None
                best_states.append(r["best_state"] if slot.has_best else r["model_state"])
            else:
                states.append(_initial_state(job, cfg, init_cache))
                opt_states.append(None)
                best_states.append(states[-1])
            self.slots.append(slot)
        f32 = torch.float32
        self.params = pack_states(states, self.layout, device=device, dtype=f32)
        self.best = pack_states(best_states, self.layout, device=device, dtype=f32)
        self.exp_avg, self.exp_avg_sq, steps = self._optimizer_blocks(opt_states)
        self.steps = torch.tensor(steps, dtype=torch.float64, device=device)
        for t in self.params.values():
            t.requires_grad_(True)
        self._load_data()
        self._alloc_step_buffers()

    # -- set-up ---------------------------------------------------------------------------
    def _optimizer_blocks(self, opt_states: list):
        """AdamW moments as blocks, from each job's saved torch AdamW state (or zeros), and
        each model's step count. torch numbers the state by named_parameters order (not the
        blocks' order: nn.LSTM lists a layer's forward weights, then its reverse ones)."""
        with torch.device("meta"):   # names only: no memory, no draw from the generator
            names = [n for n, _ in V3LSTMModel(self.model_cfg).named_parameters()]
        index = {n: i for i, n in enumerate(names)}
        avg = {b: torch.zeros_like(t) for b, t in self.params.items()}
        avg_sq = {b: torch.zeros_like(t) for b, t in self.params.items()}
        steps = []
        for m, sd in enumerate(opt_states):
            st = (sd or {}).get("state", {})
            steps.append(float(st[0]["step"]) if 0 in st else 0.0)
            for b, names in self.layout.items():
                for d, n in enumerate(names):
                    saved = st.get(index[n])
                    if saved is None:
                        continue
                    for dst, key in ((avg, "exp_avg"), (avg_sq, "exp_avg_sq")):
                        t = dst[b][m, d] if b.startswith("lstm.") else dst[b][m]
                        t.copy_(saved[key])
        return avg, avg_sq, steps

    def _load_data(self):
        """Every pair's features on the device, one (R_max, K) table per model, flattened."""
        M, dev = len(self.slots), self.device
        K = self.model_cfg.input_size
        R = max(len(s.job.data.features) for s in self.slots)
        feats = np.zeros((M, R, K), np.float32)
        for m, s in enumerate(self.slots):
            feats[m, :len(s.job.data.features)] = s.job.data.features
        self.R = R
        self.feats = torch.from_numpy(feats).to(dev).view(M * R, K)
        self.offsets = torch.arange(-(self.seq_len - 1), 1, device=dev)        # (T,)
        V = max(1, max(s.n_val for s in self.slots))
        rows = np.zeros((M, V), np.int64)
        y = np.zeros((M, V), np.float32)
        yq = np.zeros((M, V), np.float32)   # the quantile head's target (quantile_target)
        w = np.zeros((M, V), np.float32)
        for m, s in enumerate(self.slots):
            d, va = s.job.data, s.job.data.split("val")
            ends = d.ends[va]
            rows[m] = m * R + int(d.ends[0])                                   # padding: a valid window
            rows[m, :len(ends)] = m * R + ends
            y[m, :len(ends)] = d.target[va]
            yq[m, :len(ends)] = d.quantile_target(self.model_cfg.quantile_scale)[va]
            w[m, :len(ends)] = 1.0 / max(1, len(ends))
        self.val_rows, self.val_y, self.val_yq, self.val_w = (
            torch.from_numpy(a).to(dev) for a in (rows, y, yq, w))

    def _alloc_step_buffers(self):
        """Static per-batch tables, refilled each epoch; the step reads row `step_i`."""
        M, B, dev = len(self.slots), self.cfg.batch_size, self.device
        self.nb_cap = max(s.n_batches for s in self.slots)
        nb = self.nb_cap
        self.rows_tab = torch.zeros(nb, M, B, dtype=torch.int64, device=dev)
        self.y_tab = torch.zeros(nb, M, B, device=dev)
        self.yq_tab = torch.zeros(nb, M, B, device=dev)
        self.w_tab = torch.zeros(nb, M, B, device=dev)
        self.valid_tab = torch.zeros(nb, M, B, device=dev)
        self.lr_tab = torch.zeros(nb, M, dtype=torch.float64, device=dev)
        self.do_tab = torch.zeros(nb, M, dtype=torch.float64, device=dev)
        self.step_i = torch.zeros(1, dtype=torch.int64, device=dev)
        self.sse = torch.zeros(M, device=dev)
        self.spin = torch.zeros(M, device=dev)      # summed pinball loss (quantile head)
        self.acc = [torch.zeros_like(t) for t in self.params.values()]
        self._pad_tables()

    def _pad_tables(self):
        """Tables that train nothing: zero weights, no optimizer step, valid window rows."""
        self.pad_rows = np.array([m * self.R + int(s.job.data.ends[0])
                                  for m, s in enumerate(self.slots)], np.int64)
        pad = torch.from_numpy(self.pad_rows).to(self.device)
        self.rows_tab.copy_(pad.view(1, -1, 1).expand_as(self.rows_tab))
        for t in (self.y_tab, self.yq_tab, self.w_tab, self.valid_tab, self.lr_tab, self.do_tab):
            t.zero_()

    # -- one training step (captured in a CUDA graph on CUDA) -------------------------------
    def _train_step(self):
        M, B, T, K = len(self.slots), self.cfg.batch_size, self.seq_len, self.model_cfg.input_size
        i = self.step_i
        rows = self.rows_tab.index_select(0, i)[0]                              # (M, B)
        y, w = self.y_tab.index_select(0, i)[0], self.w_tab.index_select(0, i)[0]
        yq = self.yq_tab.index_select(0, i)[0]
        valid = self.valid_tab.index_select(0, i)[0]
        lr, do = self.lr_tab.index_select(0, i)[0], self.do_tab.index_select(0, i)[0]  # (M,)
        idx = rows.unsqueeze(1) + self.offsets.view(1, T, 1)                     # (M, T, B)
        x = self.feats.index_select(0, idx.reshape(-1)).view(M, T, B, K)
        pred, q = grouped_forward_with_quantiles(self.params, x, self.model_cfg, train=True,
                                                 cell=self.cell)
        err = (pred - y) ** 2                                                    # (M, B)
        loss = err
        if self.with_q:
            pin = quantile_pinball(q, yq, self.q_levels).mean(-1)                # (M, B)
            loss = err + self.q_weight * pin
        params = list(self.params.values())
        grads = torch.autograd.grad((loss * w).sum(), params)
        with torch.no_grad():
            self.sse.add_((err * valid).sum(1))
            if self.with_q:
                self.spin.add_((pin * valid).sum(1))
            torch._foreach_add_(self.acc, grads)
            grouped_adamw_(params, self.acc, list(self.exp_avg.values()),
                           list(self.exp_avg_sq.values()), self.steps, lr, do,
                           weight_decay=self.cfg.weight_decay, max_norm=self.cfg.grad_clip)
            keep = (1 - do).to(self.acc[0].dtype).unsqueeze(1)
            for a in self.acc:                       # models that stepped start a new accumulation
                a.view(M, -1).mul_(keep)
            self.step_i.add_(1)

    def _capture(self):
        """Capture _train_step in a CUDA graph; on any failure, run eagerly (and say so).

        Warm-up and capture run on one side stream made on this group's device, given to
        torch.cuda.graph explicitly: its default capture stream is made once, on whichever
        device was current then. The outer stream context puts the caller's stream back even
        when capture_end raises (torch.cuda.graph then skips restoring it). A failed capture
        also leaves torch's CUDA state half-way: see recover_from_failed_capture."""
        self._pad_tables()
        side, graph = None, None
        try:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(GRAPH_WARMUP_STEPS):
                    self.step_i.zero_()   # row 0 of the padded tables: nothing is trained
                    self._train_step()
                self.step_i.zero_()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=side):
                    self._train_step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.graph = graph
        except Exception as e:  # capture is an optimisation: eager gives the same results
            self.graph, self.use_graph = None, False
            log.warning("%s: CUDA graph capture failed (%s: %s); running the fast engine "
                        "eagerly", self.label, type(e).__name__, str(e)[:200])
            if self.device.type == "cuda":
                recover_from_failed_capture(self.device, side, graph, self.label)
        self.sse.zero_()
        self.spin.zero_()
        self.step_i.zero_()
        for a in self.acc:
            a.zero_()

    # -- epochs -----------------------------------------------------------------------------
    def _lr(self, epoch: float) -> float:
        c = self.cfg
        return cosine_warm_restarts_lr(epoch, base_lr=c.learning_rate, t0=c.scheduler_t0,
                                       t_mult=c.scheduler_t_mult, eta_min=c.eta_min)

    def _fill_tables(self, active: list[int]) -> int:
        """This epoch's batches for the active slots (each its own epoch and permutation, as
        train_model draws it); other slots train nothing. Returns the number of steps."""
        c, M, B, nb = self.cfg, len(self.slots), self.cfg.batch_size, self.nb_cap
        rows = np.broadcast_to(self.pad_rows.reshape(1, M, 1), (nb, M, B)).copy()
        y = np.zeros((nb, M, B), np.float32)
        yq = np.zeros((nb, M, B), np.float32)
        w = np.zeros((nb, M, B), np.float32)
        valid = np.zeros((nb, M, B), np.float32)
        lr = np.zeros((nb, M), np.float64)
        do = np.zeros((nb, M), np.float64)
        perms: dict = {}
        for m in active:
            s = self.slots[m]
            d, ep = s.job.data, s.record.epoch
            if (s.n_train, ep) not in perms:
                torch.manual_seed(RunRecord.epoch_seed(c.seed, ep))  # as train_model
                perms[(s.n_train, ep)] = torch.randperm(s.n_train, device="cpu").numpy()
            perm = perms[(s.n_train, ep)]
            tr, nb_m = d.split("train"), s.n_batches
            ends, target = d.ends[tr][perm], d.target[tr][perm]        # in batch order
            target_q = d.quantile_target(self.model_cfg.quantile_scale)[tr][perm]
            pos = np.arange(s.n_train)
            i, j = pos // B, pos % B                                   # batch, place in batch
            sizes = np.minimum(B, s.n_train - np.arange(nb_m) * B)     # the last may be short
            rows[i, m, j] = m * self.R + ends
            y[i, m, j] = target
            yq[i, m, j] = target_q
            w[i, m, j] = 1.0 / (sizes[i] * c.grad_accum_steps)
            valid[i, m, j] = 1.0
            lr[:nb_m, m] = [self._lr(ep + k / nb_m) for k in range(nb_m)]
            k = np.arange(nb_m)
            do[:nb_m, m] = ((k + 1) % c.grad_accum_steps == 0) | (k + 1 == nb_m)
        for dst, src in ((self.rows_tab, rows), (self.y_tab, y), (self.yq_tab, yq),
                         (self.w_tab, w), (self.valid_tab, valid), (self.lr_tab, lr),
                         (self.do_tab, do)):
            dst.copy_(torch.from_numpy(src))
        # dropout masks: one stream for the group, seeded by (seed, epoch) like the shuffles
        first = min(self.slots[m].record.epoch for m in active)
        torch.manual_seed(RunRecord.epoch_seed(c.seed, first) + 7919)
        return max(self.slots[m].n_batches for m in active)

    @torch.no_grad()
    def _validate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation MSE and mean pinball loss per model, (M,) each (the pinball zeros
        without a quantile head), in eval mode (no dropout)."""
        M, T, K = len(self.slots), self.seq_len, self.model_cfg.input_size
        V = self.val_rows.shape[1]
        chunk = max(1, min(self.cfg.eval_batch_size, EVAL_ROWS // M))
        total = torch.zeros(M, device=self.device)
        pin = torch.zeros(M, device=self.device)
        for c0 in range(0, V, chunk):
            rows = self.val_rows[:, c0:c0 + chunk]
            b = rows.shape[1]
            idx = rows.unsqueeze(1) + self.offsets.view(1, T, 1)
            x = self.feats.index_select(0, idx.reshape(-1)).view(M, T, b, K)
            pred, q = grouped_forward_with_quantiles(self.params, x, self.model_cfg, train=False,
                                                     cell=self.cell)
            y, w = self.val_y[:, c0:c0 + chunk], self.val_w[:, c0:c0 + chunk]
            total += ((pred - y) ** 2 * w).sum(1)
            if self.with_q:
                yq = self.val_yq[:, c0:c0 + chunk]
                pin += (quantile_pinball(q, yq, self.q_levels).mean(-1) * w).sum(1)
        return total, pin

    def run_epoch(self) -> list[int]:
        """Train every unfinished slot for one epoch of its own; returns the slots that
        finished (early stop or last epoch)."""
        c = self.cfg
        active = [m for m, s in enumerate(self.slots) if not s.finished]
        if self.use_graph and self.graph is None:
            self._capture()
        n_steps = self._fill_tables(active)
        self.sse.zero_()
        self.spin.zero_()
        self.step_i.zero_()
        for _ in range(n_steps):
            if self.graph is not None:
                self.graph.replay()
            else:
                self._train_step()
        val, val_pin = self._validate()
        val_host, sse_host, vpin_host, spin_host = torch.stack(  # one host sync per epoch
            [val, self.sse.to(val.dtype), val_pin, self.spin.to(val.dtype)]).cpu().tolist()
        improved, done = [], []
        for m in active:
            s, rec = self.slots[m], self.slots[m].record
            if rec.end_epoch(c, train_loss=float(sse_host[m]) / s.n_train,
                             val_loss=float(val_host[m]), lr=self._lr(float(rec.epoch + 1)),
                             q_weight=self.q_weight, with_quantiles=self.with_q,
                             train_pinball=float(spin_host[m]) / s.n_train,
                             val_pinball=float(vpin_host[m]), desc=s.job.desc):
                s.has_best = True
                improved.append(m)
            if rec.finished(c.epochs):
                s.finished = True
                done.append(m)
        if improved:
            idx = torch.tensor(improved, device=self.device)
            with torch.no_grad():
                for b, t in self.params.items():
                    self.best[b].index_copy_(0, idx, t.detach().index_select(0, idx))
        self.keep_state()
        return done

    # -- leaving the group ------------------------------------------------------------------
    def idle_fraction(self) -> float:
        return sum(s.finished for s in self.slots) / len(self.slots)

    def repack(self):
        """Keep only the unfinished slots (smaller tensors, a new graph at the next epoch)."""
        keep = [m for m, s in enumerate(self.slots) if not s.finished]
        idx = torch.tensor(keep, device=self.device)
        M_old, R = len(self.slots), self.R
        with torch.no_grad():
            for d in (self.params, self.best, self.exp_avg, self.exp_avg_sq):
                for b in d:
                    d[b] = d[b].detach().index_select(0, idx).contiguous()
            for t in self.params.values():
                t.requires_grad_(True)
            self.steps = self.steps.index_select(0, idx)
            K = self.feats.shape[1]
            self.feats = self.feats.view(M_old, R, K).index_select(0, idx).reshape(len(keep) * R, K)
            new_base = (torch.arange(len(keep), device=self.device) * R).view(-1, 1)
            self.val_rows = self.val_rows.index_select(0, idx) % R + new_base
            self.val_y = self.val_y.index_select(0, idx)
            self.val_yq = self.val_yq.index_select(0, idx)
            self.val_w = self.val_w.index_select(0, idx)
        self.slots = [self.slots[m] for m in keep]
        self.graph = None
        self._alloc_step_buffers()
        log.info("%s: %d of %d models still training; re-packed the group", self.label,
                 len(keep), M_old)

    # -- results ----------------------------------------------------------------------------
    def _blocks(self) -> dict:
        return {"params": self.params, "best": self.best, "exp_avg": self.exp_avg,
                "exp_avg_sq": self.exp_avg_sq}

    @torch.no_grad()
    def _copy_state(self) -> GroupState:
        return GroupState(
            slots=[dataclasses.replace(s, record=s.record.copy()) for s in self.slots],
            blocks={n: {b: t.detach().clone() for b, t in d.items()} for n, d in self._blocks().items()},
            steps=self.steps.clone())

    def keep_state(self) -> None:
        """Keep the state of now (an epoch boundary) as `saved`: one copy of every block on
        the device (cheaper than to the CPU: no transfer, no wait) and of every record."""
        self.saved = self._copy_state()

    @torch.no_grad()
    def _restore(self, state: GroupState) -> None:
        """Put `state` (of these same slots) back, in place: a captured graph keeps working."""
        for name, d in self._blocks().items():
            for b, t in d.items():
                t.copy_(state.blocks[name][b])
        self.steps.copy_(state.steps)
        for t in (*self.acc, self.sse, self.spin, self.step_i):
            t.zero_()

    def trial(self, n_steps: int) -> tuple[list[int], dict, dict]:
        """The first `n_steps` training steps of every unfinished slot's next epoch and a
        validation pass, with dropout off (the engines draw different masks), through the
        same path as run_epoch (a CUDA graph where it captures one); then every weight,
        moment and step count is put back. Returns the slots trained, their losses
        (host lists over them: 'train_mse_sum', 'train_pinball_sum', 'val_mse',
        'val_pinball') and cpu_blocks of them after the steps. v3_fast_train's first-group
        check compares these with the plain loop."""
        active = [m for m, s in enumerate(self.slots) if not s.finished]
        before, model_cfg = self._copy_state(), self.model_cfg
        self.model_cfg = dataclasses.replace(model_cfg, dropout=0.0)
        try:
            if self.use_graph and self.graph is None:
                self._capture()
            self._fill_tables(active)
            self._restore(before)                # zero accumulators, step 0
            for _ in range(n_steps):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._train_step()
            val, val_pin = self._validate()
            losses = torch.stack([self.sse.to(val.dtype), self.spin.to(val.dtype), val, val_pin])
            losses = dict(zip(("train_mse_sum", "train_pinball_sum", "val_mse", "val_pinball"),
                              losses[:, active].cpu().tolist()))
            cpu = self.cpu_blocks(active)
        finally:
            self.model_cfg = model_cfg
            if self.graph is not None and model_cfg.dropout > 0:
                self.graph = None                # captured without dropout: capture again
            self._restore(before)
        return active, losses, cpu

    def cpu_blocks(self, ms: list[int], state: GroupState | None = None) -> dict:
        """Weights, best weights, AdamW moments and step counts of slots `ms` (of the group
        now, or of `state`), copied to the CPU once per block; resume_state(m, cpu) slices them."""
        blocks, steps = (state.blocks, state.steps) if state else (self._blocks(), self.steps)
        idx = torch.tensor(ms, device=self.device)
        cpu = {"row": {m: r for r, m in enumerate(ms)}, "steps": steps.index_select(0, idx).cpu()}
        with torch.no_grad():
            for name, d in blocks.items():
                cpu[name] = {b: t.detach().index_select(0, idx).cpu() for b, t in d.items()}
        return cpu

    def resume_state(self, m: int, cpu: dict, state: GroupState | None = None) -> dict:
        """Slot m's training state (of the group now, or of `state`) in train_model's resume
        format (RESUME_FORMAT)."""
        c, s, r = self.cfg, (state or self).slots[m], cpu["row"][m]
        rec = s.record
        model_state = unpack_state(cpu["params"], self.layout, r)
        model = V3LSTMModel(self.model_cfg)
        model.load_state_dict(model_state)
        opt = torch.optim.AdamW(model.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
            opt, T_0=c.scheduler_t0, T_mult=c.scheduler_t_mult, eta_min=c.eta_min)
        if rec.epoch > 0:
            with warnings.catch_warnings():  # stepping the scheduler with no optimizer step
                warnings.simplefilter("ignore")
                sched.step(float(rec.epoch))
        step = float(cpu["steps"][r])
        if step > 0:
            avg = unpack_state(cpu["exp_avg"], self.layout, r)
            avg_sq = unpack_state(cpu["exp_avg_sq"], self.layout, r)
            for name, p in model.named_parameters():
                opt.state[p] = {"step": torch.tensor(step), "exp_avg": avg[name],
                                "exp_avg_sq": avg_sq[name]}
        best = unpack_state(cpu["best"], self.layout, r) if s.has_best else model_state
        return rec.resume_dict(c, model_state=model_state, optimizer_state=opt.state_dict(),
                               scheduler_state=sched.state_dict(), best_state=best)

    def outcome(self, m: int, cpu: dict) -> TrainOutcome:
        rec = self.slots[m].record
        state = self.resume_state(m, cpu)
        return TrainOutcome(best_state=state["best_state"], best_val_loss=rec.best_val,
                            best_epoch=rec.best_epoch, epochs_done=rec.epoch,
                            stopped_early=rec.stopped_early, history=list(rec.history),
                            resume_state=state, seconds=state["train_seconds"],
                            engine="fast-graph" if self.graph is not None else "fast-eager")
