"""Configuration: one validated dataclass per component, and the named presets.

Every config checks itself in `__post_init__`: a bad value raises a `ValueError` that names the field,
the value and what would be valid. A *preset* bundles the configs for one budget:

    smoke  tiny shapes for tests and notebook CI (seconds)
    cpu    a student's laptop: 32 px, trained in minutes on 2 cores
    gpu    one GPU: 64 px with VAR's 256-px scale schedule

Notebooks and the CLI read the default preset from the environment variable `HART_MINI_PRESET`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

PRESET_NAMES = ("smoke", "cpu", "gpu")
ENV_PRESET = "HART_MINI_PRESET"


def require(ok: bool, name: str, value: object, valid: str) -> None:
    """Raise a ValueError naming the field, its value and what is valid, unless `ok`."""
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: expected {valid}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class DataConfig:
    """ToyShapes, the procedural text-to-image data (see `hart_mini.model.data`)."""

    image_size: int = 32  # H = W in pixels: 32 (CPU presets) or 64 (GPU preset)
    seed: int = 0  # image i of a split is a pure function of (seed, split, i)
    train_size: int = 50_000  # number of distinct training images
    p_two_objects: float = 0.35  # share of images with two objects and a relation caption

    def __post_init__(self):
        require(self.image_size in (32, 64), "image_size", self.image_size, "32 or 64")
        require(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        require(_is_int(self.train_size) and self.train_size >= 1, "train_size", self.train_size,
                "an integer >= 1")
        require(0.0 <= self.p_two_objects <= 1.0, "p_two_objects", self.p_two_objects, "a number in [0, 1]")


SCALES_32 = (1, 2, 3, 4, 6, 8)  # 8x8 latent at 32 px: L = 130 tokens
SCALES_64 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR's 256-px schedule, 16x16 latent at 64 px: L = 680


DECODER_FIELDS = ("wide", "near", "local")


@dataclass(frozen=True)
class TokenizerConfig:
    """The hybrid tokenizer: conv autoencoder (downsample 4) + multi-scale residual VQ (see model/tokenizer.py)."""

    image_size: int = 32  # H = W of the images it encodes
    channels: int = 64  # conv width at full resolution; doubled at the 8x8 / 16x16 latent grid
    res_blocks: int = 2  # residual blocks at the latent grid (one more at half resolution)
    latent_channels: int = 16  # C: dimension of the latent and of every codebook vector
    codebook_size: int = 512  # V: one codebook shared by every scale
    scales: tuple[int, ...] = SCALES_32  # pn_1..pn_K, coarse to fine; the last equals the latent grid
    phi_convs: int = 2  # shared 3x3 phi convs, picked by relative depth k / (K - 1)
    phi_blend: float = 0.5  # phi(z) = (1 - blend) z + blend conv(z); 0 switches phi off
    # Commitment weight, beta ||f - sg(f_hat_k)|| at every scale k. VAR uses 0.25; at toy scale that pulls
    # f towards the coarse f_hat_k and wipes out the detail the residual should carry (measured: a 1.2 dB
    # continuous-vs-discrete gap at 0.25, 1.5 dB at 0.01, same steps), so we use 0.01.
    beta: float = 0.01
    dead_code_threshold: float = 0.03  # restart codes used less than this share of the average code
    # Stage (a): chance that an image decodes from f instead of f_hat (straight-through). VAR: 0. We use 0.5,
    # so the encoder learns to keep fine detail in f from the start, as a continuous autoencoder would; it
    # lifted both paths by about 1 dB in our trials.
    p_continuous_a: float = 0.5
    decoder_mode: str = "alternating"  # stage (b): alternating | separate | continuous
    p_discrete: float = 0.5  # stage (b): chance that the decoder sees the discrete latent
    # What one output pixel of the decoder sees. wide: the encoder mirrored, whose 3x3 convolutions reach about
    # 13 latent cells, the whole 8x8 latent of a 32-px image. local: each latent cell decodes its own 4x4 patch
    # (1x1 convolutions, then a 3x3 one at the pixels). near: the same, but its first convolution reads the cell
    # and its 8 neighbours (3x3 cells). HART's own decoder (VAR's) has self-attention at the latent grid and sees
    # its whole latent: narrowing the field is our toy's way to leave a residual the decoder cannot infer.
    # Measured in notebook 07, section 5: the less the decoder sees, the more the residual holds detail that the
    # tokens around it determine, and the worse the discrete path alone draws.
    decoder_field: str = "wide"

    @property
    def latent_size(self) -> int:
        return self.image_size // 4

    @property
    def num_tokens(self) -> int:
        return sum(pn * pn for pn in self.scales)  # L = sum(pn^2)

    def __post_init__(self):
        object.__setattr__(self, "scales", tuple(self.scales))  # JSON round trips give lists
        require(self.image_size in (32, 64), "image_size", self.image_size, "32 or 64")
        require(_is_int(self.channels) and self.channels >= 8 and self.channels % 8 == 0, "channels",
                self.channels, "a multiple of 8 (GroupNorm uses 8 groups)")
        require(_is_int(self.res_blocks) and self.res_blocks >= 0, "res_blocks", self.res_blocks, "an integer >= 0")
        require(_is_int(self.latent_channels) and self.latent_channels >= 1, "latent_channels",
                self.latent_channels, "an integer >= 1")
        require(_is_int(self.codebook_size) and self.codebook_size >= 2, "codebook_size", self.codebook_size,
                "an integer >= 2")
        ok = (len(self.scales) >= 1 and all(_is_int(p) and p >= 1 for p in self.scales)
              and list(self.scales) == sorted(set(self.scales)) and self.scales[-1] == self.latent_size)
        require(ok, "scales", self.scales, f"strictly increasing integers ending at the latent size {self.latent_size}")
        require(_is_int(self.phi_convs) and self.phi_convs >= 1, "phi_convs", self.phi_convs, "an integer >= 1")
        require(0.0 <= self.phi_blend <= 1.0, "phi_blend", self.phi_blend, "a number in [0, 1]")
        require(self.beta >= 0, "beta", self.beta, "a number >= 0")
        require(0 <= self.dead_code_threshold < 1, "dead_code_threshold", self.dead_code_threshold, "in [0, 1)")
        require(0.0 <= self.p_continuous_a <= 1.0, "p_continuous_a", self.p_continuous_a, "a number in [0, 1]")
        require(self.decoder_mode in ("alternating", "separate", "continuous"), "decoder_mode", self.decoder_mode,
                "'alternating', 'separate' or 'continuous'")
        require(0.0 <= self.p_discrete <= 1.0, "p_discrete", self.p_discrete, "a number in [0, 1]")
        require(self.decoder_field in DECODER_FIELDS, "decoder_field", self.decoder_field, "'wide', 'near' or 'local'")


TEXT_POSITIONS = ("learned", "counted", "segments", "phrases")


@dataclass(frozen=True)
class TransformerConfig:
    """The next-scale AR transformer and its tiny text encoder (see model/transformer.py, model/text.py)."""

    width: int = 128  # D
    depth: int = 4  # AdaLN transformer blocks
    num_heads: int = 4
    mlp_ratio: float = 4.0
    text_len: int = 16  # T: captions are left-padded to this many words
    text_depth: int = 2  # blocks of the text encoder
    # How the text encoder tells word order (model/text.py): learned, a vector per padded slot at std 0.02,
    # 25x below the word vectors (the default, what the gpu models use: order-blind in practice); counted, a vector
    # per word counted from the caption's first word, at the word vectors' scale; segments, counted plus a
    # vector for the noun phrase each word belongs to (a new phrase starts at each article "a"); phrases,
    # counted plus the mean word vector of that phrase (binds an object's words without encoder blocks; the
    # cpu models since 2026-12-05)
    text_position: str = "learned"
    # absolute: a learned vector per image token (VAR, initialised at std 0.02); grid: also fixed 2-D sin/cos
    # features of each coarse token's centre on the finest grid (scales with pn <= finest / 2), similar for the
    # cells of different scales that cover the same place; rope: 2-D rotary angles from those centres (HART)
    position: str = "grid"
    cond_dropout: float = 0.1  # share of captions dropped in training, for classifier-free guidance
    # Cross-entropy weight of a token of scale k, proportional to (pn_k^2)^-scale_balance and normalised to a
    # mean of 1 over the L tokens: 0 weighs every token alike (VAR), 1 gives every scale the same total weight.
    scale_balance: float = 0.0
    # A layout stage (ours: VAR and HART have none; notebook 09, section 7): before the full training, HART
    # trains this many steps on the first layout_scales scales alone (the cpu preset's 1x1..4x4: 30 of its 130
    # tokens, several times cheaper a step), where the layout is decided. A relation ("left of") is learned
    # only after thousands of such steps, too many at full length for a CPU budget. 0: none. The diffusion
    # baseline has no scales and ignores both fields.
    layout_steps: int = 0
    layout_scales: int = 3
    # The initial gate of every generator block's AdaLN (model/blocks.py, Block): 0 is AdaLN-Zero (DiT, VAR),
    # under which a block's attention gets no gradient until its gate has grown, and relations ("left of")
    # arrived after 1 500 to more than 8 000 coarse steps depending on the initial weights; 1 starts every block
    # as a plain pre-norm block, like HART's text-to-image blocks, which have no AdaLN (notebook 09, section 7).
    adaln_gate: float = 0.0
    # Raster order inside the first raster_scales scales (ours: VAR and HART draw every token of a scale at once;
    # notebook 09, section 7): each of their tokens is drawn after the ones before it in its scale (row by row)
    # and sees them, as in a plain autoregressive model. Drawn at once, the tokens of a coarse scale are
    # independent given the scales before: where the caption allows an object in either of two cells, each cell
    # draws it on its own chance, and a two-object prompt gets three objects. 0: VAR's parallel scales.
    raster_scales: int = 0

    def __post_init__(self):
        for name in ("width", "depth", "num_heads", "text_len"):
            value = getattr(self, name)
            require(_is_int(value) and value >= 1, name, value, "an integer >= 1")
        require(_is_int(self.text_depth) and self.text_depth >= 0, "text_depth", self.text_depth, "an integer >= 0")
        require(self.width % self.num_heads == 0, "num_heads", self.num_heads, f"a divisor of width={self.width}")
        if self.position == "rope":
            require((self.width // self.num_heads) % 4 == 0, "num_heads", self.num_heads,
                    "a value that leaves a head dimension divisible by 4 (2-D RoPE)")
        require(self.mlp_ratio > 0, "mlp_ratio", self.mlp_ratio, "a number > 0")
        require(self.position in ("absolute", "grid", "rope"), "position", self.position,
                "'absolute', 'grid' or 'rope'")
        require(self.text_position in TEXT_POSITIONS, "text_position", self.text_position,
                " or ".join(repr(t) for t in TEXT_POSITIONS))
        require(0.0 <= self.cond_dropout < 1.0, "cond_dropout", self.cond_dropout, "a number in [0, 1)")
        require(0.0 <= self.scale_balance <= 1.0, "scale_balance", self.scale_balance, "a number in [0, 1]")
        require(_is_int(self.layout_steps) and self.layout_steps >= 0, "layout_steps", self.layout_steps,
                "an integer >= 0")
        require(_is_int(self.layout_scales) and self.layout_scales >= 1, "layout_scales", self.layout_scales,
                "an integer >= 1")
        require(0.0 <= self.adaln_gate <= 1.0, "adaln_gate", self.adaln_gate, "a number in [0, 1]")
        require(_is_int(self.raster_scales) and self.raster_scales >= 0, "raster_scales", self.raster_scales,
                "an integer >= 0")


HEAD_MODES = ("off", "last", "full", "early")
HEAD_CONDITIONS = ("hidden+token", "none")
HEAD_NETWORKS = ("mlp", "map")
MAP_CONVS = ("full", "depthwise")

# Classifier-free guidance beyond this only amplifies noise. The shipped cpu HART on 300 held-out prompts:
# prompt accuracy 0.30 at cfg 3, 0.17 at 10, 0.08 at 20, 0.00 at 100 (FD 0.91, 1.54, 4.51, 25.2).
MAX_CFG_SCALE = 20.0


@dataclass(frozen=True)
class HeadConfig:
    """The residual diffusion head and how HART uses it (see model/diffusion.py, model/hart.py).

    mode: off   discrete tokens only (VAR; HART's "HART-VAR" ablation)
          last  HART: the head predicts the last scale's residual, given h and the sampled token
          full  MAR-style: the head predicts the whole last-scale latent, given h only
          early the head corrects every scale, and its output feeds the next scale's input
    """

    mode: str = "last"
    width: int = 64  # W of the MLP
    depth: int = 3  # residual blocks
    freq_dim: int = 64  # sinusoidal features of t
    prediction: str = "v"  # v | eps: what the head predicts (v was stable with 8 DDIM steps, eps diverged)
    sampler: str = "ddim"  # ddim | ddpm
    train_steps: int = 1000  # T of the cosine schedule
    sampling_steps: int = 8
    batch_mul: int = 4  # noise draws per (target, condition) pair in the loss
    # lambda: loss = CE + lambda * diffusion loss. 0 (with a head stage): the transformer trains on CE alone and
    # skips the head's work (a fifth of a cpu step), the head learns in its stage only (notebook 07, section 5).
    loss_weight: float = 1.0
    sampled_tokens: bool = True  # condition on r_K sampled from the model's own logits (HART); False: truth
    # The share of training images whose head condition and target use the true r_K instead of a sampled
    # one (with sampled_tokens). 0 is HART's code. Our last-scale tokens are right ~3 % of the time, so a
    # head trained on sampled ones learns to redraw the last scale, which harms good tokens; trained on a mix
    # it learns a partial redraw (notebook 07, section 5). Drawn per image.
    true_token_share: float = 0.0
    # HART's token subsampling, training only: each step drops a share of the last scale's tokens from the
    # sequence (their queries and keys, their CE and head terms). The share is drawn per step from a normal
    # around 1 (std 0.25) truncated to [last_drop, 1], as in HART's code (mean 0.82 for last_drop = 0.5);
    # at least last_keep tokens stay. 0 = off: every token trains.
    last_drop: float = 0.0
    last_keep: int = 32
    # The head stage: after the joint training, this many steps train a fresh head alone (transformer frozen,
    # its final averaged weights), so that the head learns against the transformer it will sample with. 0 = off
    # (HART: the head trains only jointly). With a stage, the joint training's head is HART's own (it reads z,
    # from sampled tokens: its gradient shapes h), and condition, sampled_tokens and true_token_share are the
    # stage's. Measured in notebook 07, section 5.
    stage_steps: int = 0
    # What the head reads. hidden+token: HART's z = norm(h + word_embed(e(r_K))). none: nothing (its
    # condition input is zero and frozen), so it draws from the distribution of the residuals alone. Behind the
    # whole-latent decoder (decoder_field "wide") every condition made the head's draws worse than none, the
    # residual there being texture the context does not determine; behind the "near" decoder HART's condition
    # gains in every regime and the blind head adds nothing (notebook 07, section 5).
    condition: str = "hidden+token"
    # The head that samples: mlp denoises one token at a time (MAR's and HART's MLP, model/diffusion.py); map
    # denoises the last scale's whole token map of an image at once, 3x3 convolutions between neighbouring
    # tokens (model/map_head.py), so that it can draw detail that agrees across tokens (notebook 07, section 5).
    # With a head stage, the joint training's head stays HART's MLP.
    network: str = "mlp"
    # The map head's convolutions: full (each 3x3 mixes every channel of the neighbours: 9 W^2 per token) or
    # depthwise (each channel reads its own 3x3 neighbourhood, then a per-token MLP mixes channels: 9 W + 2 W^2,
    # in multiplies about the MLP head's cost at the same width). Only the map head reads it.
    map_conv: str = "full"
    # Classifier-free guidance on the head's draws, at the logits' last ramp value (HART). False: the head draws
    # once from the conditional branch. A head that reads nothing is never guided (both branches are the same).
    guided: bool = True
    # The head sampler's temperature (MAR's): its start x_T ~ N(0, temperature^2 I); 1 = the model's own spread,
    # below 1 draws nearer the head's most likely residual. HART's code samples at 1.
    temperature: float = 1.0
    # The head's draw is multiplied by this at sampling (training never reads it): a calibration of its size.
    # A head trained half on drawn tokens learns to redraw wrong ones, and draws residuals larger than the real
    # ones (the true token's); scaling the draw keeps its shape (where and which way it adds detail), while a
    # lower temperature pulls every draw toward the head's mean and loses the detail (notebook 07, section 5).
    draw_scale: float = 1.0
    # The head's own guidance scale t: its draws are (1 + t) cond - t uncond whatever the logits' cfg (training
    # never reads it). None = the logits' t at the last scale, cfg_scale itself (HART's); 0 = the conditional
    # branch alone (as guided=False, at twice the cost). The logits' guidance at cfg 3 gives the best FD, but on
    # plain objects the head then draws mottle that reads as dots (notebook 07, section 5).
    cfg_scale: float | None = None

    def __post_init__(self):
        require(self.mode in HEAD_MODES, "mode", self.mode, f"one of {HEAD_MODES}")
        for name in ("width", "depth", "batch_mul", "sampling_steps"):
            value = getattr(self, name)
            require(_is_int(value) and value >= 1, name, value, "an integer >= 1")
        require(_is_int(self.freq_dim) and self.freq_dim >= 2 and self.freq_dim % 2 == 0, "freq_dim",
                self.freq_dim, "an even integer >= 2")
        require(_is_int(self.train_steps) and self.train_steps >= 2, "train_steps", self.train_steps,
                "an integer >= 2")
        require(self.sampling_steps <= self.train_steps, "sampling_steps", self.sampling_steps,
                f"at most train_steps={self.train_steps}")
        require(self.prediction in ("v", "eps"), "prediction", self.prediction, "'v' or 'eps'")
        require(self.sampler in ("ddim", "ddpm"), "sampler", self.sampler, "'ddim' or 'ddpm'")
        require(self.loss_weight >= 0, "loss_weight", self.loss_weight, "a number >= 0")
        require(self.loss_weight > 0 or self.stage_steps > 0 or self.mode == "off", "loss_weight", self.loss_weight,
                "a number > 0 when the head has no stage (stage_steps = 0): with 0 it would never learn")
        require(0.0 <= self.last_drop < 1.0, "last_drop", self.last_drop, "a number in [0, 1) (0 = off)")
        require(self.last_drop == 0 or self.mode in ("last", "off"), "last_drop", self.last_drop,
                f"0 with mode={self.mode!r} (token subsampling is for the 'last' and 'off' modes)")
        require(_is_int(self.last_keep) and self.last_keep >= 1, "last_keep", self.last_keep, "an integer >= 1")
        require(0.0 <= self.true_token_share <= 1.0, "true_token_share", self.true_token_share,
                "a number in [0, 1] (0 = always a sampled token, as HART)")
        require(_is_int(self.stage_steps) and self.stage_steps >= 0, "stage_steps", self.stage_steps,
                "an integer >= 0 (0 = no head stage)")
        require(self.stage_steps == 0 or self.mode in ("last", "full", "early"), "stage_steps", self.stage_steps,
                f"0 with mode={self.mode!r} (a head stage needs a head)")
        require(self.condition in HEAD_CONDITIONS, "condition", self.condition, f"one of {HEAD_CONDITIONS}")
        require(self.condition == "hidden+token" or self.mode == "last", "condition", self.condition,
                f"'hidden+token' with mode={self.mode!r} (only HART's last-scale head can read nothing)")
        require(self.network in HEAD_NETWORKS, "network", self.network, f"one of {HEAD_NETWORKS}")
        require(self.network == "mlp" or self.mode == "last", "network", self.network,
                f"'mlp' with mode={self.mode!r} (the map head draws the last scale's residual map)")
        require(self.network == "mlp" or self.last_drop == 0, "network", self.network,
                "'mlp' with token subsampling (last_drop > 0): the map head needs every token of the map")
        require(isinstance(self.guided, bool), "guided", self.guided, "True or False")
        require(self.map_conv in MAP_CONVS, "map_conv", self.map_conv, f"one of {MAP_CONVS}")
        require(isinstance(self.temperature, (int, float)) and not isinstance(self.temperature, bool)
                and self.temperature >= 0, "temperature",
                self.temperature, "a number >= 0 (1 = the model's own spread)")
        require(isinstance(self.draw_scale, (int, float)) and not isinstance(self.draw_scale, bool)
                and 0 <= self.draw_scale < math.inf, "draw_scale", self.draw_scale,
                "a finite number >= 0 (1 = the head's draw as it comes)")
        require(self.cfg_scale is None or (isinstance(self.cfg_scale, (int, float))
                and not isinstance(self.cfg_scale, bool) and 0 <= self.cfg_scale < math.inf), "cfg_scale",
                self.cfg_scale, "None (the logits' guidance, HART's) or a finite number >= 0")

    def for_mode(self, mode: str) -> HeadConfig:
        """This head with another mode (the ablations' variants), the fields that mode cannot use set back to
        their defaults: no head stage without a head, HART's condition, MLP and guidance (the logits' t at every
        scale it draws) and no token subsampling for the 'full' and 'early' heads."""
        changes: dict = {"mode": mode}
        if mode != "last":
            changes.update(condition="hidden+token", network="mlp", map_conv="full", cfg_scale=None)
        if mode == "off":
            changes["stage_steps"] = 0
        if mode in ("full", "early"):
            changes["last_drop"] = 0.0
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class BaselineConfig:
    """The latent diffusion baseline's diffusion settings (see model/baselines.py)."""

    prediction: str = "v"  # v | eps
    sampler: str = "ddim"  # ddim | ddpm
    train_steps: int = 1000
    sampling_steps: int = 30  # the "traditional diffusion" regime: 30 steps or more

    def __post_init__(self):
        require(self.prediction in ("v", "eps"), "prediction", self.prediction, "'v' or 'eps'")
        require(self.sampler in ("ddim", "ddpm"), "sampler", self.sampler, "'ddim' or 'ddpm'")
        require(_is_int(self.train_steps) and self.train_steps >= 2, "train_steps", self.train_steps, "an integer >= 2")
        require(_is_int(self.sampling_steps) and 1 <= self.sampling_steps <= self.train_steps, "sampling_steps",
                self.sampling_steps, f"an integer in [1, train_steps={self.train_steps}]")


@dataclass(frozen=True)
class TrainConfig:
    """One training run (any model): optimisation, schedule, checkpoints."""

    steps: int = 1000  # optimisation steps
    batch_size: int = 64
    lr: float = 1e-3  # peak learning rate (AdamW), after a linear warm-up, then cosine decay to lr_min
    lr_min: float = 1e-5
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max global grad norm; 0 switches clipping off
    ema: float = 0.0  # EMA decay of the weights used for sampling; 0 = off (short runs: 0.99-0.999)
    checkpoint_every: int = 200  # steps between checkpoints (and figures)
    log_every: int = 10  # steps between history entries
    seed: int = 0
    # Generators only (HART, the baseline): the share of training images with two objects, drawn as a new
    # training set of DataConfig.train_size images with that mix; None keeps the data's own (p_two_objects).
    # The held-out prompts of every evaluation keep the data's mix.
    two_objects: float | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_every", "log_every"):
            value = getattr(self, name)
            require(_is_int(value) and value >= 1, name, value, "an integer >= 1")
        require(_is_int(self.warmup_steps) and self.warmup_steps >= 0, "warmup_steps", self.warmup_steps,
                "an integer >= 0")
        require(self.lr > 0, "lr", self.lr, "a number > 0")
        require(0 <= self.lr_min <= self.lr, "lr_min", self.lr_min, f"a number in [0, lr={self.lr}]")
        require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        require(self.grad_clip >= 0, "grad_clip", self.grad_clip, "a number >= 0 (0 = off)")
        require(0 <= self.ema < 1, "ema", self.ema, "a number in [0, 1) (0 = off)")
        require(_is_int(self.seed) and self.seed >= 0, "seed", self.seed, "an integer >= 0")
        require(self.two_objects is None or 0.0 <= self.two_objects <= 1.0, "two_objects", self.two_objects,
                "None or a number in [0, 1]")


@dataclass(frozen=True)
class Preset:
    """All configs for one budget. Later components add their config here."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_train: TrainConfig = field(default_factory=TrainConfig)  # stage (a): autoencoder + VQ
    decoder_train: TrainConfig = field(default_factory=TrainConfig)  # stage (b): decoder fine-tune
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    hart_train: TrainConfig = field(default_factory=TrainConfig)
    judge_train: TrainConfig = field(default_factory=TrainConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    baseline_train: TrainConfig = field(default_factory=TrainConfig)
    shipped: str = "cpu"  # which shipped models in data/ this preset uses ("smoke" trains on cpu's tokenizer)

    def __post_init__(self):
        require(self.name in PRESET_NAMES, "name", self.name, f"one of {PRESET_NAMES}")
        require(self.shipped in PRESET_NAMES, "shipped", self.shipped, f"one of {PRESET_NAMES}")
        require(self.tokenizer.image_size == self.data.image_size, "tokenizer.image_size",
                self.tokenizer.image_size, f"the data's image_size {self.data.image_size}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(name: str) -> Preset:
    if name == "smoke":  # seconds: tiny widths, a handful of steps
        return Preset(
            name, data=DataConfig(image_size=32, train_size=2_000),
            tokenizer=TokenizerConfig(channels=16, res_blocks=1, latent_channels=8, codebook_size=64),
            tokenizer_train=TrainConfig(steps=30, batch_size=16, lr=2e-3, warmup_steps=5, checkpoint_every=15),
            decoder_train=TrainConfig(steps=10, batch_size=16, lr=1e-3, warmup_steps=2, checkpoint_every=10),
            transformer=TransformerConfig(width=32, depth=2, num_heads=2, text_depth=1),
            head=HeadConfig(width=16, depth=1, freq_dim=16),
            hart_train=TrainConfig(steps=30, batch_size=16, lr=2e-3, warmup_steps=5, checkpoint_every=15),
            judge_train=TrainConfig(steps=20, batch_size=16, lr=2e-3, warmup_steps=5, checkpoint_every=20),
            baseline_train=TrainConfig(steps=30, batch_size=16, lr=2e-3, warmup_steps=5, checkpoint_every=15),
        )
    if name == "cpu":  # a laptop: each stage within minutes on 2 cores
        return Preset(
            name, data=DataConfig(image_size=32, train_size=50_000),
            # A decoder whose pixels see their latent cell and the 8 around it (decoder_field "near"): behind the
            # whole-latent decoder ("wide") the 32-px residual was texture no head could predict, the decoder
            # drawing all the tokens determine; behind this one it holds detail the context determines, and the
            # head draws it (issue 20, notebook 07, section 5; why a narrow field: TokenizerConfig.decoder_field)
            tokenizer=TokenizerConfig(channels=64, latent_channels=16, codebook_size=512, decoder_field="near"),
            tokenizer_train=TrainConfig(steps=2400, batch_size=64, lr=2e-3, warmup_steps=100, checkpoint_every=200),
            decoder_train=TrainConfig(steps=600, batch_size=64, lr=5e-4, warmup_steps=20, checkpoint_every=200),
            # A caption encoder that reads word order (issue 21, notebook 09, section 7): each word plus the mean
            # word vector of its noun phrase, no encoder blocks; plain pre-norm blocks at the start (AdaLN gate
            # 1); 2 000 steps on the 1x1..4x4 scales alone first, where relations are learned (with 4x4 in the
            # stage, shapes and FD improve too: notebook 09, section 7)
            transformer=TransformerConfig(width=128, depth=4, num_heads=4, text_depth=0, text_position="phrases",
                                          adaln_gate=1.0, layout_steps=2000, layout_scales=4),
            # The head that samples: HART's (it reads z = norm(h + word_embed(e(r_K))), 8 guided DDIM steps),
            # trained 300 steps alone after the transformer, on the true last-scale tokens (notebook 07, section 5;
            # 16 steps drew the same images), guided at its own t = 1 (HART guides it as the logits, t = 3 at cfg 3,
            # which drew mottle that reads as dots on plain objects: texture fell where it should rise).
            # The transformer trains on CE alone (loss_weight 0): without HART's joint head term a step is a fifth
            # cheaper, and the 3 400 steps that fit the time of 2 800 joint ones help more than the term does
            # (notebook 09, section 7)
            head=HeadConfig(true_token_share=1.0, stage_steps=300, sampling_steps=8, loss_weight=0.0,
                            cfg_scale=1.0),
            # Half the training images hold two objects (the data's own mix, which every evaluation keeps, is 35 %):
            # a two-object scene's last scale must bind each shape to its object, and learns it from these scenes
            # alone (notebook 09, section 7)
            hart_train=TrainConfig(steps=3400, batch_size=32, lr=1e-3, warmup_steps=100, checkpoint_every=200,
                                   ema=0.995, weight_decay=0.05, two_objects=0.5),
            judge_train=TrainConfig(steps=1500, batch_size=128, lr=2e-3, warmup_steps=50, checkpoint_every=500),
            # the baseline gets HART's training time (alone on 2 threads, timed one after the other on 2026-12-06:
            # 892 s, HART's recipe 907 s); 5 300 steps were its time before the 2026-12-05 speed fix
            baseline_train=TrainConfig(steps=8000, batch_size=32, lr=1e-3, warmup_steps=100, checkpoint_every=250,
                                       ema=0.995, weight_decay=0.05, two_objects=0.5),  # HART's mix too
        )
    # One GPU: 64 px, VAR's 256-px scale schedule. Sized so that the whole pipeline (every model below, the
    # evaluation on 2 000 prompts, the benchmark, the export) fits 8 minutes on one H100 at ~0.99 of these
    # steps (the README's 7-minute run trains ~0.84 of them) and the fp16 weights of tokenizer, judge, HART
    # and baseline fit 25 MB: notebooks/gpu_budget.md has the derivation, and
    # `python -m hart_mini pipeline --preset gpu --dry-run` recomputes it from the FLOPs and bytes of every op.
    return Preset(
        name, data=DataConfig(image_size=64, train_size=100_000),
        tokenizer=TokenizerConfig(image_size=64, channels=64, latent_channels=32, codebook_size=1024,
                                  scales=SCALES_64, phi_convs=4),
        tokenizer_train=TrainConfig(steps=5000, batch_size=128, lr=2e-3, warmup_steps=150, checkpoint_every=1000,
                                    log_every=50),
        decoder_train=TrainConfig(steps=1200, batch_size=128, lr=5e-4, warmup_steps=50, checkpoint_every=600,
                                  log_every=50),
        transformer=TransformerConfig(width=192, depth=6, num_heads=6, mlp_ratio=3.0, text_depth=1),
        head=HeadConfig(width=128, depth=3, freq_dim=64, last_drop=0.5),  # HART's token subsampling: -27 % time
        hart_train=TrainConfig(steps=3600, batch_size=128, lr=1e-3, warmup_steps=150, checkpoint_every=1200,
                               ema=0.997, weight_decay=0.05, log_every=50),
        judge_train=TrainConfig(steps=2000, batch_size=128, lr=2e-3, warmup_steps=50, checkpoint_every=1000,
                                log_every=50),
        baseline_train=TrainConfig(steps=8000, batch_size=128, lr=1e-3, warmup_steps=150, checkpoint_every=2000,
                                   ema=0.997, weight_decay=0.05, log_every=50),  # HART's seconds on an H100
        shipped="gpu",
    )


def default_preset_name() -> str:
    """The preset named by `HART_MINI_PRESET`, or `cpu` when it is unset."""
    name = os.environ.get(ENV_PRESET, "").strip() or "cpu"
    require(name in PRESET_NAMES, ENV_PRESET, name, f"one of {PRESET_NAMES}")
    return name


def get_preset(name: str | None = None) -> Preset:
    """Return the preset `name` (default: `HART_MINI_PRESET`, else `cpu`)."""
    name = default_preset_name() if name is None else name
    require(name in PRESET_NAMES, "preset", name, f"one of {PRESET_NAMES}")
    return _build(name)
