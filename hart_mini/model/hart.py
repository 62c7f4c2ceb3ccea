"""The assembled HART: frozen hybrid tokenizer + caption tokenizer + next-scale transformer + residual head.

Training (teacher forcing), as in HART's `HARTForT2I.forward` (github.com/mit-han-lab/hart):

    loss = CE(all image tokens) + lambda * diffusion_loss(head, target, z)
    z      = norm(h_K + word_embed(e(r_K)))            h_K: last-scale hidden states; r_K sampled from the
                                                       model's own last-scale logits (or the truth)
    target = (f - f_hat_{<K} - e(r_K)) / residual_scale   the residual against the token actually chosen

Sampling, as in HART's `autoregressive_infer_cfg` (`HART.sample_latent`, one loop): the text prefix once
through the KV cache, then for k = 1..K, on one doubled batch [cond; uncond]
    logits_k = (1 + t_k) cond - t_k uncond,  t_k = cfg_scale * (k - 1) / (K - 1)      (linear ramp)
    r_k ~ top-k / top-p;   f_hat += phi_k(up(e(r_k)));   next input = area_down(f_hat, pn_{k+1})
then at the last scale the head draws d from z = norm(h_K + word_embed(e(r_K))) in `sampling_steps` steps
(the same guidance, shared noise), and the decoder reads the continuous latent f_hat_{<K} + e(r_K) + d.

HeadConfig.condition 'none' (the cpu preset's, after notebook 07, section 5) keeps every line above, but the
head's weights on z are zero and frozen: it draws from the distribution of the residuals alone, trained on
the true last-scale tokens in a head stage after the joint training, and runs once, unguided.

head.mode selects the ablations of notebook 09: off (discrete only), last (HART), full (MAR-style: the head
draws the whole last-scale latent from h alone), early (the head corrects every scale; its output feeds
the next scale's input). The modes 'full' and 'early', and the no-cache reference the KV cache is tested
against, sample in hart_mini/model/sampling_variants.py, outside the main loop: those call HART, HART does
not call them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart_mini import checkpoint
from hart_mini.config import MAX_CFG_SCALE, HeadConfig, TransformerConfig, require
from hart_mini.model.diffusion import CosineSchedule, MLPHead, diffusion_loss
from hart_mini.model.diffusion import sample as diffusion_sample
from hart_mini.model.map_head import MapHead
from hart_mini.model.text import CaptionTokenizer
from hart_mini.model.tokenizer import HybridTokenizer
from hart_mini.model.transformer import NextScaleTransformer


def check_sampling(cfg_scale: float, top_k: int, top_p: float) -> None:
    """Refuse sampling knobs that make no sense, naming the knob."""
    require(isinstance(cfg_scale, (int, float)) and 0 <= cfg_scale <= MAX_CFG_SCALE, "cfg_scale", cfg_scale,
            f"a number in [0, {MAX_CFG_SCALE:g}] (0 = no guidance; larger values only amplify noise)")
    require(isinstance(top_k, int) and top_k >= 0, "top_k", top_k, "an integer >= 0 (0 = off)")
    require(isinstance(top_p, (int, float)) and 0 < top_p <= 1, "top_p", top_p, "a number in (0, 1] (1 = off)")


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Keep the top_k largest logits and the smallest set whose probability reaches top_p; -inf elsewhere."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample(logits: torch.Tensor, top_k: int, top_p: float, generator: torch.Generator | None,
           check: bool = True, where: str = "") -> torch.Tensor:
    """(B, n, V) logits -> (B, n) indices.

    check: refuse logits that hold NaN or inf before drawing, on any device. (torch.multinomial only says so
    on the CPU; on CUDA it hits a device-side assert that ends the process and every later CUDA call.) The
    check reads one boolean back from the device: once per scale at sampling time. The training loss draws
    from logits it has made finite already, and passes check=False to stay free of read-backs."""
    probs = filter_logits(logits.float(), top_k, top_p).softmax(-1)
    if check and not bool(torch.isfinite(probs).all()):
        raise FloatingPointError(f"the token logits are not finite (NaN or inf){where}: the model's weights or "
                                 "its inputs hold NaN or inf")
    return torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(logits.shape[:2])


def caption_dropout(n: int, rate: float, device: torch.device) -> torch.Tensor:
    """Which of n captions to drop for classifier-free guidance: uniform draws, so exactly `rate` on average.

    HART's code tests torch.randn(B) < rate (a Gaussian), which drops ~54 % at rate 0.1 (hart_transformer_t2i.py).
    """
    return torch.rand(n, device=device) < rate


def guidance_scale(cfg_scale: float, k: int, K: int) -> float:
    """t_k = cfg_scale * k / (K - 1): the linear ramp, from 0 at the 1x1 scale to cfg_scale at the last."""
    return cfg_scale * k / max(K - 1, 1)


def mix_guidance(out: torch.Tensor, t: float) -> torch.Tensor:
    """Classifier-free guidance on a doubled batch [cond; uncond]: (1 + t) cond - t uncond, in fp32.

    Under bf16 autocast the halves arrive in bf16 (8 bits of mantissa); at t = 3 the difference of two
    nearby numbers, times 4, would then lose what separates the guided logits, and the GPU's samples would
    drift from the CPU's (fp32) ones. So both halves are cast to fp32 first: logits, the head's output and
    the baseline's denoiser all mix through here."""
    cond, uncond = out.float().chunk(2)
    return (1 + t) * cond - t * uncond


def guide(logits: torch.Tensor, k: int, K: int, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance of scale k's logits [cond; uncond] with the ramp t_k (guidance_scale)."""
    return mix_guidance(logits, guidance_scale(cfg_scale, k, K))


def both_branches(x: torch.Tensor, guided: bool) -> torch.Tensor:
    """With guidance the batch is [cond; uncond], and both halves read the same x: (B, ...) -> (2B, ...)."""
    return torch.cat([x, x]) if guided else x


def last_kept_count(cfg: HeadConfig, n: int, u: torch.Tensor) -> int:
    """How many of the last scale's n tokens a training step keeps, for a uniform draw u in [0, 1): the
    dropped share ~ N(1, 0.25) truncated to [last_drop, 1] (the inverse CDF of u between the bounds), as in
    HART's code; at least last_keep tokens stay. (For last_drop = 0.5 and n = 256: 51 on average.)"""
    low = torch.special.ndtr(torch.tensor((cfg.last_drop - 1) / 0.25))  # the CDF at the lower bound
    share = 1 + 0.25 * torch.special.ndtri(low + (0.5 - low) * u)
    return min(n, max(cfg.last_keep, round(n * (1 - float(share)))))


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean CE of logits (B, n, V) against targets (B, n), token j weighted by weights[j] (n,), normalised so
    that equal weights give the plain mean."""
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # (B, n)
    return (ce * weights).mean() / weights.mean()


def tokens_to_map(x: torch.Tensor, pn: int) -> torch.Tensor:
    """(B, pn*pn, C) -> (B, C, pn, pn)."""
    return x.transpose(1, 2).reshape(x.shape[0], -1, pn, pn)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, p, p) -> (B, p*p, C)."""
    return x.flatten(2).transpose(1, 2)


class HART(nn.Module):
    """Tokenizer (frozen) + text + next-scale transformer + residual diffusion head."""

    def __init__(self, cfg: TransformerConfig, tokenizer: HybridTokenizer, text_tokenizer: CaptionTokenizer,
                 head: HeadConfig | None = None):
        super().__init__()
        require(text_tokenizer.max_len <= cfg.text_len, "text_tokenizer.max_len", text_tokenizer.max_len,
                f"at most the transformer's text_len={cfg.text_len}")
        self.cfg, self.text_tokenizer = cfg, text_tokenizer
        self.head_cfg = head or HeadConfig(mode="off")
        self.tokenizer = tokenizer.eval().requires_grad_(False)
        tok = tokenizer.cfg
        self.scales, self.K = tok.scales, len(tok.scales)
        require(cfg.layout_steps == 0 or cfg.layout_scales < self.K, "layout_scales", cfg.layout_scales,
                f"fewer than the tokenizer's {self.K} scales (a layout stage trains the coarse ones alone)")
        require(cfg.raster_scales < self.K, "raster_scales", cfg.raster_scales,
                f"fewer than the tokenizer's {self.K} scales (the last scale, the head's, is drawn at once)")
        self.transformer = NextScaleTransformer(cfg, tok.scales, tok.latent_channels, tok.codebook_size,
                                                text_tokenizer.vocab_size, text_tokenizer.article_id)
        if self.head_cfg.mode != "off":
            self.reset_head(final=self.head_cfg.stage_steps == 0)
            self.schedule = CosineSchedule(self.head_cfg.train_steps)
        # CE weight of each image token (L,): (pn_k^2)^-scale_balance, mean 1 (see TransformerConfig)
        sizes = torch.cat([torch.full((p * p,), float(p * p)) for p in self.scales])
        weights = sizes.pow(-cfg.scale_balance)
        self.register_buffer("token_weights", weights / weights.mean(), persistent=False)
        # The head's targets are divided by this, measured from data (measure_residual_scale), so they
        # have unit variance; it is saved with the weights.
        self.register_buffer("residual_scale", torch.ones(()))

    def reset_head(self, final: bool = True) -> None:
        """A fresh, untrained head and condition norm, z = norm(h + word_embed(e(r))). final: the head that
        samples, which reads z or nothing (HeadConfig.condition), an MLP or a map head (HeadConfig.network);
        not final: the joint training's head when a head stage follows, HART's own MLP, which reads z whatever
        the config says (its gradient shapes h). The stage starts from a fresh final head (notebook 07, section 5)."""
        device = self.transformer.word_embed.weight.device  # built before the head, on the model's device
        blind = final and self.head_cfg.condition == "none"
        C, D = self.tokenizer.cfg.latent_channels, self.cfg.width
        if final and self.head_cfg.network == "map":  # denoises the last scale's map jointly (model/map_head.py)
            self.head = MapHead(self.head_cfg, C, D, self.scales[-1], reads_condition=not blind).to(device)
        else:
            self.head = MLPHead(self.head_cfg, C, D, reads_condition=not blind).to(device)
        self.cond_norm = nn.LayerNorm(self.cfg.width).to(device)

    @property
    def mode(self) -> str:
        return self.head_cfg.mode

    def train(self, mode: bool = True) -> HART:
        super().train(mode)
        self.tokenizer.eval()  # frozen, always
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("tokenizer.")]

    def parameter_counts(self) -> dict:
        count = lambda m: sum(p.numel() for p in m.parameters())
        out = {"transformer": count(self.transformer), "text_encoder": count(self.transformer.text),
               "head": count(self.head) if self.mode != "off" else 0, "tokenizer": count(self.tokenizer)}
        out["head_share_of_transformer"] = round(out["head"] / out["transformer"], 4)
        return out

    def encode_text(self, captions: list[str] | tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions, or captions already tokenized as (ids, mask) by the data pipeline -> ids, mask (B, T)."""
        device = self.tokenizer.quantizer.codebook.weight.device
        ids, mask = captions if isinstance(captions, tuple) else self.text_tokenizer(captions)
        return ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)

    # --- what the head is trained on ---

    def condition(self, h: torch.Tensor, idx: torch.Tensor | None, frozen: bool = False) -> torch.Tensor:
        """z = norm(h + word_embed(e(r))), or norm(h) for the full-token head. h (B, n, D), idx (B, n).
        frozen: no gradient reaches the transformer (h, word_embed), only the norm (the head stage)."""
        x = h if idx is None else h + self.transformer.word_embed(self.tokenizer.quantizer.codebook(idx))
        return self.cond_norm(x.detach() if frozen else x)

    def _targets(self, images: torch.Tensor, check_values: bool = True):
        """Tokens, teacher-forcing inputs and the continuous targets (before choosing r) for each mode."""
        q = self.tokenizer.quantizer
        f = self.tokenizer.encode(images, check_values)
        if self.mode == "early":
            indices, corrections = q.quantize_continuous(f)
            inputs = q.teacher_forcing_inputs(indices, corrections)
            # per token: the exact downsampled rest it should reach, (B, L, C)
            exact = torch.cat([map_to_tokens(q.embed(i) + d) for i, d in zip(indices, corrections)], dim=1)
            return indices, inputs, exact
        indices, f_hat, _, _ = q.quantize(f)
        inputs = q.teacher_forcing_inputs(indices)
        before_last = f - (f_hat - q.contribution(indices[-1], self.K - 1))  # f minus scales 1..K-1
        return indices, inputs, map_to_tokens(before_last)  # (B, pn_K^2, C)

    def previous_codes(self, indices: list[torch.Tensor]) -> torch.Tensor | None:
        """Raster scales: for the image tokens 2..L, the code e(r) of the token before each one in its scale,
        row by row, zeros for a scale's first token and on parallel scales -> (B, L - 1, C); None without raster
        scales. indices: the K token maps (B, pn_k, pn_k) (or as many as are known, in order)."""
        if not self.cfg.raster_scales:
            return None
        codes = []
        for k, r in enumerate(indices):
            code = self.tokenizer.quantizer.codebook(r.flatten(1))  # (B, pn^2, C)
            if k < self.cfg.raster_scales:  # shift right by one: token j reads e(r_{j-1})
                codes.append(torch.cat([torch.zeros_like(code[:, :1]), code[:, :-1]], dim=1))
            else:
                codes.append(torch.zeros_like(code))
        return torch.cat(codes, dim=1)[:, 1:]  # the 1x1 token is predicted from the text, with no input

    @torch.no_grad()
    def measure_residual_scale(self, images: torch.Tensor) -> float:
        """Set residual_scale to the std of the head's targets (with true tokens) on these images."""
        if self.mode == "off":
            return 1.0
        indices, _, exact = self._targets(images)
        q = self.tokenizer.quantizer
        if self.mode == "full":
            target = exact
        elif self.mode == "last":
            target = exact - q.codebook(indices[-1].flatten(1))
        else:
            target = exact - q.codebook(torch.cat([i.flatten(1) for i in indices], 1))
        self.residual_scale.fill_(float(target.std()))
        return float(self.residual_scale)

    # --- training ---

    def kept_last_tokens(self, device: torch.device) -> torch.Tensor | None:
        """HART's token subsampling: the sorted indices of the last scale's tokens that train this step, or
        None (all of them); see last_kept_count."""
        if self.head_cfg.last_drop == 0 or not self.training:
            return None
        n = self.scales[-1] ** 2
        kept = last_kept_count(self.head_cfg, n, torch.rand(()))  # drawn on the CPU: no GPU sync
        return torch.randperm(n, device=device)[:kept].sort().values  # (kept,)

    def true_token_share(self, head_only: bool) -> float:
        """The share of images whose head reads the true last-scale token, not one drawn from the logits.
        With a head stage, the joint training's head is HART's (0: always drawn) and the config is the stage's."""
        cfg = self.head_cfg
        if cfg.stage_steps and not head_only:
            return 0.0
        return cfg.true_token_share if cfg.sampled_tokens else 1.0

    def loss(self, images: torch.Tensor, captions: list[str] | tuple[torch.Tensor, torch.Tensor],
             head_only: bool = False, layout: bool = False) -> tuple[torch.Tensor, dict]:
        """CE over the image tokens + lambda * diffusion loss of the head (if any). The logs are detached
        tensors: reading them back would stall a GPU, so the trainer does it only when it logs.

        head_only (the head stage, HeadConfig.stage_steps): the transformer runs without gradients and the
        loss is the diffusion loss alone, so the head learns against the very transformer it samples with.
        layout (the layout stage, TransformerConfig.layout_steps): the CE of the first layout_scales scales
        alone; the sequence stops there, so the step is much cheaper."""
        require(not (head_only and self.mode == "off"), "head_only", head_only, "False for a model without a head")
        require(not (head_only and layout), "layout", layout, "False in the head stage")
        with torch.no_grad():
            indices, inputs, exact = self._targets(images, check_values=False)
        ids, mask = self.encode_text(captions)
        drop = caption_dropout(ids.shape[0], self.cfg.cond_dropout, ids.device)
        if layout:
            n = self.transformer.starts[self.cfg.layout_scales]  # tokens of scales 1..layout_scales
            prev = self.previous_codes(indices[:self.cfg.layout_scales])
            logits, _ = self.transformer(ids, mask, inputs[:, :n - 1], drop, prev=prev)  # (B, n, V)
            targets = torch.cat([i.flatten(1) for i in indices[:self.cfg.layout_scales]], dim=1)  # (B, n)
            ce = weighted_cross_entropy(logits, targets, self.token_weights[:n])
            return ce, {"ce": ce.detach(), "token_acc": (logits.argmax(-1) == targets).float().mean().detach()}
        keep = self.kept_last_tokens(ids.device)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not head_only):
            prev = self.previous_codes(indices)  # raster scales only
            logits, h = self.transformer(ids, mask, inputs, drop, keep, prev)  # (B, L, V), (B, L, D); fewer with keep
        targets = torch.cat([i.flatten(1) for i in indices], dim=1)  # (B, L)
        last = self.transformer.starts[-2]  # first token of the last scale
        weights = self.token_weights  # (L,) the CE weight of each token
        if keep is not None:  # only the kept last-scale tokens are scored
            targets = torch.cat([targets[:, :last], targets[:, last:][:, keep]], dim=1)
            weights = torch.cat([weights[:last], weights[last:][keep]])
            exact = exact[:, keep] if self.mode == "last" else exact
        scored = slice(0, last) if self.mode == "full" else slice(None)  # MAR-style: no tokens at the last scale
        ce = weighted_cross_entropy(logits[:, scored], targets[:, scored], weights[scored])
        logs = {"ce": ce.detach(), "token_acc": (logits.argmax(-1) == targets).float().mean().detach()}
        if self.mode == "off" or (self.head_cfg.loss_weight == 0 and not head_only):
            return ce, logs  # no head, or a joint weight of 0: the head learns in its stage alone (HeadConfig)
        h_head = h if self.mode == "early" else h[:, last:]
        truth = targets if self.mode == "early" else targets[:, last:]
        if self.mode == "full":
            z, target = self.condition(h_head, None, head_only), exact
        else:
            share = self.true_token_share(head_only)
            with torch.no_grad():  # NaN logits (a diverged run) become finite here, so that sampling does not
                # raise before the trainer sees the NaN loss and stops with its own message
                drawn = torch.nan_to_num(logits[:, -truth.shape[1]:].detach().float(), nan=0.0)
                chosen = sample(drawn, 0, 1.0, None, check=False) if share < 1 else truth
                if 0 < share < 1:  # some images: the truth
                    use_truth = torch.rand(truth.shape[0], 1, device=truth.device) < share
                    chosen = torch.where(use_truth, truth, chosen)  # (B, n)
            z = self.condition(h_head, chosen, head_only)
            target = exact - self.tokenizer.quantizer.codebook(chosen)  # the residual against the chosen token
        group = target.shape[1] if isinstance(self.head, MapHead) else 1  # a map: one noise level per image
        diff = diffusion_loss(self.head, (target / self.residual_scale).flatten(0, 1), z.flatten(0, 1),
                              self.schedule, self.head_cfg.prediction, self.head_cfg.batch_mul, group)
        logs["diff"] = diff.detach()
        if head_only:
            return diff, logs
        return ce + self.head_cfg.loss_weight * diff, logs

    # --- sampling: the text once, then scale by scale against the KV cache, then the head at the last scale ---

    def text_batch(self, prompts: list[str], guided: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ids, mask (B', T) and drop (B',): the prompts, and with guidance the same prompts again with their
        captions dropped (the unconditional branch), one doubled batch [cond; uncond], B' = 2B."""
        ids, mask = self.encode_text(list(prompts))
        B = ids.shape[0]
        if guided:
            ids, mask = ids.repeat(2, 1), mask.repeat(2, 1)
        drop = torch.arange(ids.shape[0], device=ids.device) >= B  # (B',) True on the second half
        return ids, mask, drop

    def draw_tokens(self, logits: torch.Tensor, k: int, cfg_scale: float, top_k: int, top_p: float,
                    generator: torch.Generator) -> torch.Tensor:
        """Scale k's logits (B', n, V) -> token indices r_k (B, n): guided (if cfg_scale > 0), filtered, drawn."""
        final = guide(logits, k, self.K, cfg_scale) if cfg_scale > 0 else logits
        return sample(final, top_k, top_p, generator, where=f" at scale {k + 1} of {self.K}")

    def _head_sample(self, z: torch.Tensor, t_cfg: float, guided: bool, sampling_steps: int,
                     generator: torch.Generator) -> torch.Tensor:
        """Draw the head's output for every token of z (B', n, D) -> (B, n, C), in latent units.
        With guidance, cond and uncond halves share the noise x_t: out = (1 + t) cond - t uncond, where t is
        the head's own HeadConfig.cfg_scale, or t_cfg (the logits' guidance at this scale) where that is None.
        (Notebook 10's profiler times the head through this method's name.)"""
        B = z.shape[0] // 2 if guided else z.shape[0]
        n, C = z.shape[1], self.tokenizer.cfg.latent_channels
        zf = z.flatten(0, 1)  # (B' n, D): the head sees one token at a time
        t_head = t_cfg if self.head_cfg.cfg_scale is None else self.head_cfg.cfg_scale

        def model(x, t):
            if not guided:
                return self.head(x, t, zf)
            return mix_guidance(self.head(torch.cat([x, x]), torch.cat([t, t]), zf), t_head)  # fp32

        x0 = diffusion_sample(model, (B * n, C), self.schedule, sampling_steps, self.head_cfg.prediction,
                              self.head_cfg.sampler, generator, z.device, temperature=self.head_cfg.temperature)
        # the head works on residuals / residual_scale; draw_scale calibrates the draw's size (HeadConfig)
        return x0.view(B, n, C) * (self.residual_scale * self.head_cfg.draw_scale)

    def _sampling_inputs(self, prompts, cfg_scale, top_k, top_p, sampling_steps, forced) -> tuple[int, list]:
        """Check every knob; returns the head's step count and the forced token maps (a list)."""
        check_sampling(cfg_scale, top_k, top_p)
        steps = self.head_cfg.sampling_steps if sampling_steps is None else sampling_steps
        require(isinstance(steps, int) and steps >= 1, "sampling_steps", steps, "an integer >= 1")
        if isinstance(prompts, str) or len(prompts) == 0:
            raise ValueError("prompts must be a non-empty list of strings")
        forced = list(forced or [])
        require(len(forced) <= self.K, "forced", f"{len(forced)} token maps", f"at most K={self.K}")
        for k, given in enumerate(forced):
            require(tuple(given.shape) == (len(prompts), self.scales[k], self.scales[k]), f"forced[{k}].shape",
                    tuple(given.shape), f"(B, pn, pn) = ({len(prompts)}, {self.scales[k]}, {self.scales[k]})")
        return steps, forced

    @torch.no_grad()
    def sample_latent(self, prompts: list[str], cfg_scale: float = 3.0, top_k: int = 0, top_p: float = 1.0,
                      sampling_steps: int | None = None, seed: int = 0, use_head: bool = True,
                      forced: list[torch.Tensor] | None = None) -> dict:
        """Sample the K token maps, then the head's residual. Returns indices (K x (B, pn, pn)), f_hat (the
        discrete latent), latent (what the decoder reads), path ('discrete' or 'continuous'), the raw
        conditional logits of each scale and the last scale's hidden states h (B, pn_K^2, D).

        forced: token maps (B, pn_k, pn_k) for the first len(forced) scales, used instead of sampling them
        (the diagnostic "force the true coarse tokens, let the model draw the rest", hart_mini.diagnose).
        The no-cache reference and the ablation head modes 'full' and 'early' sample in
        hart_mini.model.sampling_variants (its sample_latent and generate take any model)."""
        steps, forced = self._sampling_inputs(prompts, cfg_scale, top_k, top_p, sampling_steps, forced)
        head = use_head and self.mode != "off"
        require(not (head and self.mode in ("full", "early")), "head mode", self.mode,
                "'last' or 'off' here: the ablation modes sample with hart_mini.model.sampling_variants.generate("
                "model, prompts) (or pass use_head=False for the discrete image)")
        self.eval()
        q, K, B, guided = self.tokenizer.quantizer, self.K, len(prompts), cfg_scale > 0
        ids, mask, drop = self.text_batch(prompts, guided)
        generator = torch.Generator(device=ids.device).manual_seed(seed)
        logits, h, cache, cond = self.transformer.start(ids, mask, drop)  # the last text position predicts 1x1
        C, size = self.tokenizer.cfg.latent_channels, self.scales[-1]
        f_hat = torch.zeros(B, C, size, size, device=ids.device)  # the discrete latent so far
        indices, raw_logits = [], []
        for k, pn in enumerate(self.scales):
            given = forced[k].to(ids.device).flatten(1) if k < len(forced) else None  # (B, pn^2) or None
            # scale k reads f_hat so far, area-downsampled to pn_k: x (B, pn^2, C)
            x = map_to_tokens(q.next_input(f_hat, k - 1)) if k > 0 else None
            if 0 < k < self.cfg.raster_scales:  # a raster scale: one token at a time, each reading the one before
                logits, r = self._raster_scale(x, k, cache, cond, guided, given, (cfg_scale, top_k, top_p, generator))
            else:
                if k > 0:
                    logits, h = self.transformer.step(both_branches(x, guided), k, cache, cond)  # (B', pn^2, V|D)
                r = given if given is not None else self.draw_tokens(logits, k, cfg_scale, top_k, top_p, generator)
            raw_logits.append(logits[:B])
            indices.append(r.view(B, pn, pn))
            f_before, f_hat = f_hat, f_hat + q.contribution(r.view(B, pn, pn), k)  # f_hat += phi_k(up(e(r_k)))
        latent = f_hat
        if head:  # the last scale (no phi) turns continuous: f_hat_{<K} + (e(r_K) + d), d drawn by the head
            # A head that reads nothing (HeadConfig.condition 'none') would draw the same from both halves:
            # it runs once, unguided; so does a head configured unguided (HeadConfig.guided).
            head_guided = guided and self.head_cfg.guided and self.head_cfg.condition != "none"
            z = self.condition(h if head_guided else h[:B], both_branches(r, head_guided))  # (B', pn^2, D)
            d = self._head_sample(z, guidance_scale(cfg_scale, K - 1, K), head_guided, steps, generator)  # (B, pn^2, C)
            latent = f_before + tokens_to_map(q.codebook(r) + d, pn)
        return {"indices": indices, "f_hat": f_hat, "latent": latent, "path": "continuous" if head else "discrete",
                "logits": raw_logits, "h": h[:B]}

    def _raster_scale(self, x: torch.Tensor, k: int, cache, cond: torch.Tensor, guided: bool,
                      given: torch.Tensor | None, knobs: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw raster scale k token by token: token j runs through the cache with its input x[:, j] (B, pn^2, C)
        and the code of token j - 1, then is drawn (or taken from `given`). -> (logits (B', pn^2, V), r (B, pn^2))."""
        prev = torch.zeros_like(x[:, :1])  # (B, 1, C): no token before the first
        logits, r = [], []
        for j in range(x.shape[1]):
            step_logits, _ = self.transformer.step(both_branches(x[:, j:j + 1], guided), k, cache, cond,
                                                   both_branches(prev, guided), offset=j)  # (B', 1, V)
            token = given[:, j:j + 1] if given is not None else self.draw_tokens(step_logits, k, *knobs)  # (B, 1)
            logits.append(step_logits)
            r.append(token)
            prev = self.tokenizer.quantizer.codebook(token)  # (B, 1, C)
        return torch.cat(logits, dim=1), torch.cat(r, dim=1)

    @torch.no_grad()
    def generate(self, prompts: list[str], cfg_scale: float = 3.0, top_k: int = 0, top_p: float = 1.0,
                 sampling_steps: int | None = None, seed: int = 0, use_head: bool = True) -> torch.Tensor:
        """Prompts -> images (B, 3, H, W) in [0, 1]. use_head=False gives the discrete-only image."""
        return self.decode(self.sample_latent(prompts, cfg_scale, top_k, top_p, sampling_steps, seed, use_head))

    def decode(self, sampled: dict) -> torch.Tensor:
        """What sample_latent returned -> images (B, 3, H, W) in [0, 1], through the path it names."""
        image = self.tokenizer.decode(sampled["latent"], sampled["path"])
        return image.clamp(-1, 1).add(1).div(2)

    # --- files ---

    def save(self, path, tokenizer_file: str | Path, extra: dict | None = None) -> None:
        """Save everything but the tokenizer, which is referenced by file name and sha256 (same folder)."""
        meta = {"kind": "hart", "transformer": dataclasses.asdict(self.cfg), "head": dataclasses.asdict(self.head_cfg),
                "tokenizer": dataclasses.asdict(self.tokenizer.cfg), "text": self.text_tokenizer.to_dict(),
                **HybridTokenizer.reference(path, tokenizer_file), "parameters": self.parameter_counts(),
                **(extra or {})}
        checkpoint.save(path, {k: v for k, v in self.state_dict().items() if not k.startswith("tokenizer.")}, meta)

    @classmethod
    def from_file(cls, path, device: str | torch.device = "cpu") -> HART:
        """Load a HART file and the tokenizer it names (same folder, sha256 checked)."""
        tensors, meta = checkpoint.load(path)
        if meta.get("kind") != "hart":
            raise ValueError(f"{str(path)!r} holds a {meta.get('kind')!r}, not a HART model")
        cfg = checkpoint.config_from(TransformerConfig, meta, "transformer", path)
        head = checkpoint.config_from(HeadConfig, meta, "head", path)
        model = cls(cfg, HybridTokenizer.beside(path, meta), CaptionTokenizer.from_dict(meta["text"]), head)
        if head.mode != "off" and head.stage_steps:
            with torch.random.fork_rng(devices=[]):  # its weights are loaded below: leave the caller's RNG alone
                model.reset_head()  # the head that samples, not the joint training's (a file holds the stage's)
        own = {k: v for k, v in model.state_dict().items() if k.startswith("tokenizer.")}
        checkpoint.load_module(model, {**own, **tensors}, str(path))
        model.meta = meta
        return model.to(device).eval()
