"""Reference implementations that tests and benchmarks check the library against.

Not used by the library itself. Importable from `tests/` and from the `benchmarks/*.py` scripts:

- `MoveOracle`: a perfect world model of graph moves, the upper bound of every world-model and
  planning evaluation and the reference model of their tests;
- `reference_generate`: the slow reference of `evaluation.compliance.generate_walk_sequences`
  (one sequence at a time, no cache);
- `sigreg_reference`: plain-autograd SIGReg, the reference of the fused `losses.sigreg`;
- `TransitionOracle`: a perfect world model of a finite environment (a transition table), the
  upper bound of the environment planning and discrimination and their tests' reference model.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .data.graphs import Graph
from .errors import LeWMConfigError, LeWMInputError
from .evaluation.compliance import _is_int, _validate_generation_args
from .evaluation.held_out import neighbor_table
from .losses import (
    _all_reduce_sums,
    _distributed_group,
    _no_autocast,
    _prepare_sigreg_inputs,
    _statistic_from_sums,
    _validate_sigreg_settings,
    sigreg_knots,
)
from .modeling_actions import ActionInputs


class MoveOracle(nn.Module):
    """A perfect world model of graph moves, with the `encode` / `predict` / `config` interface.

    The latent of a window is `embedding[last vertex]` (one-hot by default); `predict` decodes
    the vertex of each latent as its nearest embedding row and moves along the action's edge,
    so its predictions are exact. An action rank `r >= out_degree[v]` is taken modulo the
    out-degree (the convention of [`lewm_hf.evaluation.planning_search`] for plans executed open loop).
    It is the upper bound of every evaluation here, and the reference model of their tests.

    Args:
        graph (`Graph`): The graph.
        embedding (`torch.Tensor` of shape `(num_vertices, D)`, *optional*): Distinct rows; the
            identity (one-hot latents, `D = num_vertices`) if None.
        history_length (`int`, defaults to 3): The `H` reported in `config`.
    """

    def __init__(
        self, graph: Graph, embedding: torch.Tensor | None = None, history_length: int = 3
    ):
        super().__init__()
        n = graph.num_vertices
        embedding = torch.eye(n) if embedding is None else embedding.float()
        if embedding.shape[0] != n:
            raise LeWMInputError("embedding", tuple(embedding.shape), f"needs {n} rows")
        self.register_buffer("embedding", embedding)
        self.register_buffer("table", torch.from_numpy(neighbor_table(graph)))
        self.register_buffer("degree", torch.from_numpy(graph.out_degree.astype(np.int64)))
        self.config = SimpleNamespace(
            history_length=history_length,
            d_state=embedding.shape[1],
            action_vocab_size=graph.max_out_degree,
        )

    def encode(self, input_ids: torch.Tensor, attention_mask=None, locus=None) -> torch.Tensor:
        """`embedding[input_ids[:, -1]]`, `(N, D)` (states are full-length windows)."""
        return self.embedding[input_ids[:, -1].long()]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The vertex whose embedding is nearest to each latent, `(...)` for `z` `(..., D)`."""
        flat = z.reshape(-1, z.shape[-1]).float()
        return torch.cdist(flat, self.embedding).argmin(-1).view(z.shape[:-1])

    def predict(self, z_hist: torch.Tensor, actions: ActionInputs) -> torch.Tensor:
        """Exact next latents `(B, T, D)`: `[:, t]` = embedding of the move `a_t` (`actions.ids`)
        from `z_t`."""
        if z_hist.dim() != 3 or not 1 <= z_hist.shape[1] <= self.config.history_length:
            raise LeWMInputError(
                "z_hist", tuple(z_hist.shape), "needs 1 to history_length steps (B, T, D)"
            )
        vertex = self.decode(z_hist)  # (B, T)
        rank = actions.ids.long() % self.degree[vertex]
        return self.embedding[self.table[vertex, rank]]


def reference_generate(
    model: torch.nn.Module,
    prompts: torch.Tensor,
    length: int,
    context_window: int,
    rule: str = "window",
    decoding: str = "greedy",
    temperature: float = 1.0,
    seed: int = 0,
    vocab_size: int | None = None,
) -> torch.LongTensor:
    """The slow reference of `generate_walk_sequences`: one sequence at a time, no cache.

    Every step runs the model on the whole current context as a plain list of tokens (default
    positions `0 ...`), so it shares no code path with the batched generation: the tests use it
    as the oracle (the outputs must be identical) and `benchmarks/compliance_eval.py` as the
    baseline it times. Same arguments and results as `generate_walk_sequences` (both context
    rules, greedy and sampled decoding with the same uniforms `u[n, i]`, prompts of any length,
    `vocab_size`), only slower; the sampled token is found by counting the CDF entries
    `<= u * total` rather than by a sorted search.

    Args:
        model (`torch.nn.Module`): A transformers causal LM.
        prompts (`torch.LongTensor`): `(N, P)` prompt tokens, `N, P >= 1`.
        length (`int`): Tokens per output sequence, prompt included; `>= P`.
        context_window (`int`): The window `w`, `>= 2`.
        rule (`str`, defaults to `"window"`): Context rule, `window` or `chunked`.
        decoding (`str`, defaults to `"greedy"`): `greedy` or `sample`.
        temperature (`float`, defaults to 1.0): Softmax temperature for `sample`, `> 0`.
        seed (`int`, defaults to 0): Seed of the sampling generator.
        vocab_size (`int`, *optional*): Only the first `vocab_size` logits are considered.

    Returns:
        `torch.LongTensor`: `(N, length)` sequences, the prompts in the first `P` columns.

    Raises:
        `LeWMConfigError`: on a bad `rule`, `decoding`, `temperature`, `context_window`,
        `vocab_size` or `length`. `LeWMInputError`: when `prompts` is not `(N, P)`, `N, P >= 1`.
    """
    _validate_generation_args(rule, decoding, temperature, context_window, 1, vocab_size)
    prompts = torch.as_tensor(prompts)
    if prompts.ndim != 2 or prompts.shape[0] < 1 or prompts.shape[1] < 1:
        raise LeWMInputError(
            "prompts", f"shape {tuple(prompts.shape)}", "must be (N, P), N, P >= 1"
        )
    num, prompt_length = prompts.shape
    if not _is_int(length) or length < prompt_length:
        raise LeWMConfigError(
            "length", length, f"must be an integer >= prompt length {prompt_length}"
        )
    w = int(context_window)
    uniforms = torch.rand(
        (num, length), generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64
    )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for n in range(num):
                seq = [int(v) for v in prompts[n].tolist()]
                start = max(0, prompt_length - w)  # chunked: the context is seq[start:i]
                for i in range(prompt_length, length):
                    if rule == "window":
                        context = seq[max(0, i - w) : i]
                    else:
                        if i - start > w:  # restart from the last w // 2 tokens
                            start = i - w // 2
                        context = seq[start:i]
                    ids = torch.tensor([context], device=device)
                    logits = model(input_ids=ids).logits[0, -1].cpu()
                    if vocab_size is not None:
                        logits = logits[:vocab_size]
                    if decoding == "greedy":
                        seq.append(int(logits.argmax()))
                    else:
                        cdf = torch.softmax(logits.double() / temperature, dim=-1).cumsum(-1)
                        token = int((cdf <= uniforms[n, i] * cdf[-1]).sum())
                        seq.append(min(token, len(cdf) - 1))
                out.append(seq)
    finally:
        model.train(was_training)
    return torch.tensor(out, dtype=torch.long)


def sigreg_reference(
    z: torch.Tensor,
    projections: torch.Tensor | None = None,
    num_slices: int = 1024,
    num_knots: int = 17,
    t_max: float = 3.0,
    generator: torch.Generator | None = None,
    process_group: dist.ProcessGroup | None = None,
) -> torch.Tensor:
    """Plain-autograd SIGReg over every knot; same arguments and value as `sigreg`.

    Kept as the readable reference for tests and benchmarks; `sigreg` is the one to train with.

    Returns:
        `torch.Tensor`: 0-dim SIGReg value in float32 (float64 for float64 `z`).
    """
    _validate_sigreg_settings(num_slices, num_knots, t_max)
    distributed, group = _distributed_group(process_group)
    z, slices = _prepare_sigreg_inputs(z, projections, num_slices, generator, distributed, group)
    knots, weights = sigreg_knots(num_knots, t_max, dtype=z.dtype, device=z.device)

    with _no_autocast(z):
        h = z @ slices  # (T, B, M)
        angles = h.unsqueeze(-1) * knots  # (T, B, M, K)
        cos_sum = torch.cos(angles).sum(dim=1)  # (T, M, K)
        sin_sum = torch.sin(angles).sum(dim=1)
        count: torch.Tensor | int = h.shape[1]
        if distributed:
            cos_sum, sin_sum, count = _all_reduce_sums(cos_sum, sin_sum, h.shape[1], group)
        return _statistic_from_sums(cos_sum, sin_sum, count, knots, weights)


class TransitionOracle(nn.Module):
    """A perfect world model of a finite deterministic environment, with the `encode` /
    `predict` / `config` interface.

    The latent of a state is `embedding[state id]` (one-hot by default), the state id read from
    the tokens by `state_of_tokens`; `predict` decodes each latent's state as the nearest
    embedding row and applies the transition table, so its predictions are exact.

    Args:
        next_state (`np.ndarray`): `(S, A)` next state ids (`transition_table`).
        state_of_tokens (`Callable`): Token windows `(N, L)` (numpy) -> state ids `(N,)`.
        embedding (`torch.Tensor` of shape `(S, D)`, *optional*): Distinct rows; the identity
            if None.
        history_length (`int`, defaults to 1): The `H` reported in `config`.
    """

    def __init__(
        self,
        next_state: np.ndarray,
        state_of_tokens,
        embedding: torch.Tensor | None = None,
        history_length: int = 1,
    ):
        super().__init__()
        n, actions = next_state.shape
        embedding = torch.eye(n) if embedding is None else embedding.float()
        if embedding.shape[0] != n:
            raise LeWMInputError("embedding", tuple(embedding.shape), f"needs {n} rows")
        self.register_buffer("embedding", embedding)
        self.register_buffer("table", torch.as_tensor(np.asarray(next_state), dtype=torch.long))
        self.state_of_tokens = state_of_tokens
        self.config = SimpleNamespace(
            history_length=history_length, d_state=embedding.shape[1], action_vocab_size=actions
        )

    def encode(self, input_ids: torch.Tensor, attention_mask=None, locus=None) -> torch.Tensor:
        """`embedding[state_of_tokens(input_ids)]`, `(N, D)`."""
        ids = self.state_of_tokens(input_ids.cpu().numpy())
        return self.embedding[torch.as_tensor(np.asarray(ids), dtype=torch.long)]

    def predict(self, z_hist: torch.Tensor, actions: ActionInputs) -> torch.Tensor:
        """Exact next latents `(B, T, D)`: `[:, t]` = embedding of `table[state(z_t), a_t]`."""
        flat = z_hist.reshape(-1, z_hist.shape[-1]).float()
        state = torch.cdist(flat, self.embedding).argmin(-1).view(z_hist.shape[:-1])
        return self.embedding[self.table[state, actions.ids.long()]]


__all__ = [
    "MoveOracle",
    "TransitionOracle",
    "reference_generate",
    "sigreg_reference",
]
