"""The hybrid tokenizer: an image becomes discrete tokens at several scales plus a continuous residual.

HART section 3.1 (arXiv 2410.10812), built on VAR's multi-scale residual VQ (arXiv 2404.02905):

    x (B, 3, H, W) in [-1, 1]
      -> encoder -> f (B, C, h, w), h = H / 4                  the continuous latent
      -> for each scale pn_k, coarse to fine:                  r_k (B, pn_k, pn_k) token indices
             r_k     = nearest code to area_down(f - f_hat, pn_k)
             f_hat  += phi_k(bicubic_up(e(r_k), h))            (no phi at the last scale; VAR has one there)
                                                                bicubic_up = A z A^T, A the (h, pn_k) bicubic matrix
      -> residual = f - f_hat                                  what the tokens cannot explain
      -> decoder(f_hat) (discrete path) or decoder(f) = decoder(f_hat + residual) (continuous path)

Training has two stages, as in HART: (a) autoencoder + VQ; (b) encoder, codebook and phi frozen, the
decoder fine-tuned on discrete and continuous latents alternately, so one decoder reads both.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from hart_mini import checkpoint
from hart_mini.config import TokenizerConfig

# --- bicubic upsampling as two small matmuls ------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def bicubic_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """The 1-D bicubic resize of F.interpolate(mode='bicubic') as a matrix A (n_out, n_in): column j is the
    j-th unit vector resized, so A x resizes any x, with interpolate's border clamping included."""
    eye = torch.eye(n_in, device=device).view(n_in, 1, n_in, 1)  # n_in images of one column each
    return F.interpolate(eye, size=(n_out, 1), mode="bicubic").view(n_in, n_out).t()


def bicubic_up(z: torch.Tensor, size: int) -> torch.Tensor:
    """z (B, C, p, p) -> (B, C, size, size), the same numbers as F.interpolate(z, size, mode='bicubic') up to
    float rounding. Bicubic resizing is separable: up(z) = A z A^T, A = bicubic_matrix(p, size).

    Why not interpolate itself: on a GPU its bicubic kernels (fp32; atomic adds in the backward) took 120 of
    the 136 ms of a tokenizer training step on an H200 (data/results/gpu/profile/); two matmuls take
    microseconds. Autocast is off so that z keeps its dtype, as interpolate keeps it."""
    A = bicubic_matrix(z.shape[-1], size, z.device).to(z.dtype)  # (size, p)
    with torch.autocast(z.device.type, enabled=False):
        return A @ z @ A.t()  # (size, p) @ (B, C, p, p) @ (p, size)


# --- the autoencoder --------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), with a 1x1 skip when the width changes."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(8, c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(8, c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    """(B, 3, H, W) -> (B, C, H/4, W/4). No residual block at full resolution: it would halve the speed."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        c = cfg.channels
        self.net = nn.Sequential(
            nn.Conv2d(3, c, 3, padding=1),  # (B, c, H, W)
            nn.Conv2d(c, c, 4, stride=2, padding=1), ResBlock(c, c),  # (B, c, H/2, W/2)
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1),  # (B, 2c, H/4, W/4)
            *[ResBlock(2 * c, 2 * c) for _ in range(cfg.res_blocks)],
            nn.GroupNorm(8, 2 * c), nn.SiLU(), nn.Conv2d(2 * c, cfg.latent_channels, 3, padding=1),  # (B, C, h, w)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, C, h, w) -> (B, 3, 4h, 4w), the encoder mirrored (nearest upsampling + conv)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        c = cfg.channels
        self.net = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, 2 * c, 3, padding=1),  # (B, 2c, h, w)
            *[ResBlock(2 * c, 2 * c) for _ in range(cfg.res_blocks)],
            nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(2 * c, c, 3, padding=1), ResBlock(c, c),
            nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c, c, 3, padding=1),  # (B, c, H, W)
            nn.GroupNorm(8, c), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1),  # (B, 3, H, W)
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


class LocalDecoder(nn.Module):
    """(B, C, h, w) -> (B, 3, 4h, 4w), each latent cell decoded into its own 4x4 patch: a first convolution that
    reads the cell (decoder_field "local": 1x1) or the cell and its 8 neighbours ("near": 3x3), 1x1 convolutions,
    a stride-4 transposed convolution that writes the patch, a 3x3 convolution that blends the patches' borders.
    An output pixel sees one latent cell (local) or 3x3 of them (near), where Decoder's see the whole latent."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        c, k = cfg.channels, 3 if cfg.decoder_field == "near" else 1
        self.net = nn.Sequential(
            nn.Conv2d(cfg.latent_channels, 2 * c, k, padding=k // 2), nn.SiLU(),  # (B, 2c, h, w)
            nn.Conv2d(2 * c, 2 * c, 1), nn.SiLU(), nn.Conv2d(2 * c, 2 * c, 1), nn.SiLU(),  # every cell on its own
            nn.ConvTranspose2d(2 * c, c, 4, stride=4), nn.SiLU(),  # (B, c, H, W): cell (i, j) -> its 4x4 patch
            nn.Conv2d(c, c, 1), nn.SiLU(), nn.Conv2d(c, 3, 3, padding=1),  # (B, 3, H, W)
        )

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


# --- the multi-scale residual quantizer ---------------------------------------------------------------


class Phi(nn.Module):
    """phi(z) = (1 - blend) z + blend conv3x3(z): smooths the upsampled codes (VAR's quant_resi)."""

    def __init__(self, channels: int, blend: float):
        super().__init__()
        self.conv, self.blend = nn.Conv2d(channels, channels, 3, padding=1), blend

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.blend == 0 else (1 - self.blend) * z + self.blend * self.conv(z)


@dataclass
class Tokens:
    """What the tokenizer makes of a batch of images."""

    f: torch.Tensor  # (B, C, h, w) the continuous latent
    indices: list[torch.Tensor]  # K tensors (B, pn_k, pn_k) of token indices, coarse to fine
    f_hat: torch.Tensor  # (B, C, h, w) the discrete latent, sum of all scales' contributions
    residual: torch.Tensor  # (B, C, h, w) f - f_hat

    @property
    def sequence(self) -> torch.Tensor:
        """All indices as one sequence (B, L), scale after scale, each map row-major."""
        return torch.cat([r.flatten(1) for r in self.indices], dim=1)


class MultiScaleQuantizer(nn.Module):
    """One codebook (V, C) shared by all scales, and the phi convs; see the module docstring."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg, self.scales = cfg, cfg.scales
        self.codebook = nn.Embedding(cfg.codebook_size, cfg.latent_channels)
        self.phis = nn.ModuleList(Phi(cfg.latent_channels, cfg.phi_blend) for _ in range(cfg.phi_convs))
        # How often each code was picked lately (EMA of its share); 0 at start, so the first restart
        # initialises the whole codebook from encoder outputs.
        self.register_buffer("usage", torch.zeros(cfg.codebook_size))
        self.recent: list[torch.Tensor] = []  # the vectors the last training batch quantized (not saved)

    def phi(self, k: int) -> Phi:
        """The shared phi conv for scale k, chosen by its relative depth k / (K - 1)."""
        depth = k / max(len(self.scales) - 1, 1)
        return self.phis[min(int(depth * len(self.phis)), len(self.phis) - 1)]

    def nearest(self, x: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code (L2) for each vector of x (B, C, p, p) -> (B, p, p).

        Always in fp32, also under bf16 autocast: the distance is a difference of large terms, and bf16's
        8-bit mantissa would pick another code for a few % (coarse scales) to ~20 % (fine scales) of tokens.
        """
        B, C, p, _ = x.shape
        with torch.autocast(x.device.type, enabled=False):
            v = x.float().permute(0, 2, 3, 1).reshape(-1, C)  # (B*p*p, C)
            e = self.codebook.weight.float()  # (V, C)
            dist = v.pow(2).sum(1, keepdim=True) - 2 * v @ e.t() + e.pow(2).sum(1)[None]  # ||v - e||^2, (N, V)
        return dist.argmin(1).view(B, p, p)

    def lift(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """Vectors z (B, C, pn_k, pn_k) of scale k -> their part of the latent, phi_k(up(z)), (B, C, h, w)."""
        h = self.scales[-1]
        if k == len(self.scales) - 1:
            return z  # the last scale is already h x w; no phi, by the convention used everywhere
        return self.phi(k)(bicubic_up(z, h))

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token indices (B, p, p) -> code vectors (B, C, p, p)."""
        return self.codebook(idx).permute(0, 3, 1, 2)

    def contribution(self, idx: torch.Tensor, k: int) -> torch.Tensor:
        """What scale k adds to f_hat: phi_k(up(e(r_k))), (B, C, h, w); no phi at the last scale."""
        return self.lift(self.embed(idx), k)

    def quantize(self, f: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """f (B, C, h, w) -> (indices, f_hat, vq_loss, rests). Gradients reach codebook and phi via f_hat.

        vq_loss is VAR's, averaged over scales: ||f_hat_k - sg(f)||^2 + beta ||sg(f_hat_k) - f||^2.
        rests are the vectors each scale quantized (detached): samples for dead-code restarts.
        Runs in fp32 whatever the autocast: each scale subtracts from the rest, and the finest scales'
        rests are a tenth of f, below bf16's resolution of f.
        """
        with torch.autocast(f.device.type, enabled=False):
            return self._quantize(f.float())

    def _quantize(self, f: torch.Tensor):
        rest, f_hat = f.detach(), torch.zeros_like(f)
        indices, rests, vq_loss = [], [], f.new_zeros(())
        for k, pn in enumerate(self.scales):
            target = F.interpolate(rest, size=(pn, pn), mode="area") if pn != self.scales[-1] else rest
            idx = self.nearest(target.detach())  # (B, pn, pn)
            part = self.contribution(idx, k)
            f_hat, rest = f_hat + part, rest - part
            # codebook and phi move towards f; the encoder commits (weakly) to each partial f_hat
            vq_loss = vq_loss + F.mse_loss(f_hat, f.detach()) + self.cfg.beta * F.mse_loss(f_hat.detach(), f)
            indices.append(idx)
            rests.append(target.detach())
        if self.training:
            self._track_usage(indices)
        return indices, f_hat, vq_loss / len(self.scales), rests

    def quantize_continuous(self, f: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The decomposition behind the diffusion-early ablation: each scale's token r_k and its continuous
        correction d_k = area_down(rest, pn_k) - e(r_k), (B, C, pn_k, pn_k). The scale then contributes
        lift(e(r_k) + d_k), the exact downsampled rest, so the corrections add up to f exactly."""
        rest, indices, corrections = f, [], []
        for k, pn in enumerate(self.scales):
            target = F.interpolate(rest, size=(pn, pn), mode="area") if pn != self.scales[-1] else rest
            idx = self.nearest(target)
            rest = rest - self.lift(target, k)
            indices.append(idx)
            corrections.append(target - self.embed(idx))
        return indices, corrections

    def indices_to_f_hat(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """Rebuild the discrete latent from token indices: sum_k contribution(r_k, k), (B, C, h, w)."""
        return sum(self.contribution(idx, k) for k, idx in enumerate(indices))

    def next_input(self, f_hat: torch.Tensor, k: int) -> torch.Tensor:
        """The AR model's input for scale k + 1: the cumulative f_hat area-downsampled, (B, C, pn, pn)."""
        pn = self.scales[k + 1]
        return F.interpolate(f_hat, size=(pn, pn), mode="area") if pn != self.scales[-1] else f_hat

    def teacher_forcing_inputs(self, indices: list[torch.Tensor], corrections: list[torch.Tensor] | None = None
                               ) -> torch.Tensor:
        """Inputs for scales 2..K in one sequence (B, L - pn_1^2, C): what the AR model sees when training.
        With corrections (diffusion-early), each scale contributes lift(e(r_k) + d_k) instead of its code."""
        f_hat, inputs = torch.zeros_like(self.contribution(indices[0], 0)), []
        for k in range(len(self.scales) - 1):
            z = self.embed(indices[k]) + (corrections[k] if corrections is not None else 0)
            f_hat = f_hat + self.lift(z, k)
            inputs.append(self.next_input(f_hat, k).flatten(2).transpose(1, 2))  # (B, pn_{k+1}^2, C)
        return torch.cat(inputs, dim=1)

    def counts(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """How often each code appears in indices, (V,) float. A scatter, not torch.bincount: on a GPU,
        bincount reads the largest index back to the host, a sync in every training step."""
        flat = torch.cat([i.flatten() for i in indices])
        return torch.zeros(self.cfg.codebook_size, device=flat.device).index_add_(0, flat, torch.ones_like(
            flat, dtype=torch.float32))

    @torch.no_grad()
    def _track_usage(self, indices: list[torch.Tensor]) -> None:
        counts = self.counts(indices)
        self.usage.mul_(0.99).add_(0.01 * counts / counts.sum())

    @torch.no_grad()
    def restart_dead_codes(self, rests: list[torch.Tensor]) -> int:
        """Move rarely used codes onto random vectors the encoder produced; returns how many moved."""
        V, C = self.codebook.weight.shape
        dead = (self.usage < self.cfg.dead_code_threshold / V).nonzero().flatten()
        if len(dead) == 0:
            return 0
        pool = torch.cat([r.permute(0, 2, 3, 1).reshape(-1, C) for r in rests])  # (N, C)
        pick = torch.randint(len(pool), (len(dead),), device=pool.device)
        jitter = 0.01 * pool.std() * torch.randn(len(dead), C, device=pool.device)
        self.codebook.weight[dead] = pool[pick] + jitter
        # Restarted codes start just above the threshold: if nobody picks them within ~70 steps
        # (0.99^70 = 0.5), they count as dead again and move to new samples.
        self.usage[dead] = 2 * self.cfg.dead_code_threshold / V
        return len(dead)


# --- the hybrid tokenizer ----------------------------------------------------------------------------


class HybridTokenizer(nn.Module):
    """Encoder + multi-scale quantizer + decoder (+ a second decoder for the 'separate' ablation)."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        self.cfg = cfg
        decoder = Decoder if cfg.decoder_field == "wide" else LocalDecoder
        self.encoder, self.quantizer, self.decoder = Encoder(cfg), MultiScaleQuantizer(cfg), decoder(cfg)
        # The 'separate' ablation: a second decoder for the discrete path, copied from `decoder` at stage (b).
        self.decoder_discrete = decoder(cfg) if cfg.decoder_mode == "separate" else None

    @classmethod
    def from_file(cls, path, device: str | torch.device = "cpu") -> HybridTokenizer:
        """Load a trained tokenizer (tokenizer.safetensors); its config comes from the file."""
        tensors, meta = checkpoint.load(path)
        if meta.get("kind") != "tokenizer":
            raise ValueError(f"{str(path)!r} holds a {meta.get('kind')!r}, not a tokenizer")
        model = cls(checkpoint.config_from(TokenizerConfig, meta, "config", path))
        checkpoint.load_module(model, tensors, str(path))
        model.meta = meta
        return model.to(device).eval()

    @staticmethod
    def reference(path, tokenizer_file) -> dict:
        """Metadata by which a model file at `path` names its tokenizer, which must sit in the same folder."""
        path, tokenizer_file = Path(path), Path(tokenizer_file)
        if tokenizer_file.parent.resolve() != path.parent.resolve():
            raise ValueError(f"the tokenizer {str(tokenizer_file)!r} must sit in the same folder as {str(path)!r}")
        return {"tokenizer_file": tokenizer_file.name, "tokenizer_sha256": checkpoint.sha256(tokenizer_file)}

    @classmethod
    def beside(cls, path, meta: dict) -> HybridTokenizer:
        """Load the tokenizer that the model file at `path` (with metadata `meta`) names, checking its sha256."""
        tok_path = Path(path).parent / meta["tokenizer_file"]
        if not tok_path.is_file():
            raise FileNotFoundError(f"{str(path)!r} needs its tokenizer {str(tok_path)!r} beside it")
        if checkpoint.sha256(tok_path) != meta["tokenizer_sha256"]:
            raise ValueError(f"{str(tok_path)!r} is not the tokenizer {str(path)!r} was trained with (sha256 differs)")
        return cls.from_file(tok_path)

    def check_images(self, x: torch.Tensor, values: bool = True) -> None:
        """Refuse inputs that are not (B, 3, H, W) float images in [-1, 1] at this tokenizer's size
        (values=False: shape and dtype only, nothing read back from the device)."""
        S = self.cfg.image_size
        if not torch.is_tensor(x) or x.ndim != 4:
            raise ValueError(f"images must be a (B, 3, {S}, {S}) tensor, got {getattr(x, 'shape', type(x))}")
        if x.shape[1] != 3:
            raise ValueError(f"images must have 3 channels (RGB), got {x.shape[1]} in shape {tuple(x.shape)}; "
                             "convert greyscale or RGBA first (hart_mini.model.data.ImageFolder does)")
        if tuple(x.shape[2:]) != (S, S):
            raise ValueError(f"images are {x.shape[2]}x{x.shape[3]} but this tokenizer takes {S}x{S} "
                             f"(its preset's image_size); resize them or use a tokenizer for that size")
        if not x.is_floating_point():
            raise ValueError(f"images must be float in [-1, 1], got dtype {x.dtype}; "
                             "uint8 pixels: use hart_mini.model.data.uint8_to_tensor")
        if not values:
            return
        lo, hi = float(x.min()), float(x.max())
        if lo < -1.001 or hi > 1.001:
            raise ValueError(f"image values span [{lo:.3g}, {hi:.3g}] but must lie in [-1, 1]; "
                             "pixels in [0, 1] become x * 2 - 1, pixels in [0, 255] become x / 127.5 - 1")

    def encode(self, x: torch.Tensor, check_values: bool = True) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> f (B, C, h, w). check_values=False skips the range check, which reads
        two numbers back from a GPU (training losses skip it: the data pipeline draws valid images).

        Only stage (a), which trains the encoder, runs it in the caller's precision (bf16 autocast on a GPU).
        A frozen encoder runs in fp32: f and its residual are the targets of everything trained later."""
        self.check_images(x, check_values)
        if self.training and torch.is_grad_enabled():
            return self.encoder(x)
        with torch.autocast(x.device.type, enabled=False):
            return self.encoder(x.float())

    def tokenize(self, x: torch.Tensor, check_values: bool = True) -> Tokens:
        """Images -> per-scale indices, f, f_hat and residual = f - f_hat."""
        f = self.encode(x, check_values)
        indices, f_hat, _, _ = self.quantizer.quantize(f)
        return Tokens(f=f, indices=indices, f_hat=f_hat, residual=f - f_hat)

    def decode(self, latent: torch.Tensor, path: str = "continuous") -> torch.Tensor:
        """Latent (B, C, h, w) -> image (B, 3, H, W). path: 'continuous' (f) or 'discrete' (f_hat)."""
        if path not in ("continuous", "discrete"):
            raise ValueError(f"path={path!r} is invalid: expected 'continuous' or 'discrete'")
        if path == "discrete" and self.decoder_discrete is not None:
            return self.decoder_discrete(latent)
        return self.decoder(latent)

    def reconstruct(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both paths at once: {'discrete': decode(f_hat), 'continuous': decode(f)}."""
        tokens = self.tokenize(x)
        return {"discrete": self.decode(tokens.f_hat, "discrete"), "continuous": self.decode(tokens.f, "continuous")}

    # --- the two training stages ---

    def stage_a_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Autoencoder + VQ: MSE(decode(f_hat), x) + vq_loss, straight-through to the encoder.

        With p_continuous_a > 0, that share of the images decodes from f instead of f_hat. The vectors each
        scale quantized are kept in quantizer.recent: the trainer restarts dead codes onto them.
        """
        f = self.encode(x, check_values=False)
        indices, f_hat, vq_loss, rests = self.quantizer.quantize(f)
        f_st = f + (f_hat - f).detach()  # straight-through: the forward pass sees f_hat, gradients go to f
        if self.cfg.p_continuous_a > 0:  # some images decode from f itself, so f learns to keep fine detail
            continuous = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.cfg.p_continuous_a
            f_st = torch.where(continuous, f, f_st)
        recon = F.mse_loss(self.decoder(f_st), x)
        self.quantizer.recent = rests  # the pool for the trainer's next dead-code restart
        counts = self.quantizer.counts(indices)
        p = counts / counts.sum()
        perplexity = torch.exp(-torch.special.xlogy(p, p).sum())  # xlogy: 0 log 0 = 0, without selecting p > 0
        logs = {"recon": recon.detach(), "vq": vq_loss.detach(), "perplexity": perplexity.detach(),
                "used": (counts > 0).sum()}
        return recon + vq_loss, logs

    def stage_a_parameters(self) -> list[nn.Parameter]:
        return [*self.encoder.parameters(), *self.quantizer.parameters(), *self.decoder.parameters()]

    def start_stage_b(self) -> list[nn.Parameter]:
        """Freeze encoder, codebook and phi; start the second decoder (if any) from the first.

        Returns the parameters stage (b) trains: the decoder(s).
        """
        for p in [*self.encoder.parameters(), *self.quantizer.parameters()]:
            p.requires_grad_(False)
        if self.decoder_discrete is None:
            return list(self.decoder.parameters())
        self.decoder_discrete.load_state_dict(self.decoder.state_dict())
        return [*self.decoder.parameters(), *self.decoder_discrete.parameters()]

    def stage_b_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Decoder fine-tune: each image's latent is f_hat with probability p_discrete, else f.

        'separate': the main decoder sees only f, a second decoder only f_hat.
        'continuous': the decoder sees only f (the ablation whose discrete path decodes badly).
        """
        with torch.no_grad():
            tokens = self.tokenize(x, check_values=False)
        mode = self.cfg.decoder_mode
        if mode == "alternating":
            discrete = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < self.cfg.p_discrete
            loss = F.mse_loss(self.decoder(torch.where(discrete, tokens.f_hat, tokens.f)), x)
        elif mode == "separate":
            loss = F.mse_loss(self.decoder(tokens.f), x) + F.mse_loss(self.decoder_discrete(tokens.f_hat), x)
        else:
            loss = F.mse_loss(self.decoder(tokens.f), x)
        return loss, {"recon": loss.detach()}
