"""Audio codecs that turn a wave into a (frames, codebooks) grid of integer codes and back.

Two implementations share the `Codec` protocol:

- `DacCodec`: the Descript Audio Codec through transformers' `DacModel` (44.1 kHz, 9 x 1024, 86.13 frames/s).
  This is what Dia was trained on and what real fine-tuning should use.
- `SpectralRVQCodec`: an offline stand-in that needs no downloaded weights, fitted in under a minute on the
  data itself. It exists so the demo and the tests can run end to end without DAC weights.

Both are registered by name in `CODECS`: `codec_class(name).from_options(...)` makes a new one for
`prepare`, and `load_codec(directory)` restores either one from the `codec.json` that `save()` wrote.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import librosa
import numpy as np
import torch

from diamusic.errors import DiamusicError, did_you_mean, first_line

CODEC_FILE = "codec.json"
DAC_MODEL = "descript/dac_44khz"  # the DAC Dia was trained on
# that model's layout, for what needs it without loading the weights (e.g. a pattern's timings)
DAC_SAMPLE_RATE, DAC_HOP_LENGTH, DAC_CODEBOOKS = 44100, 512, 9
DAC_FRAME_RATE = DAC_SAMPLE_RATE / DAC_HOP_LENGTH

# (seconds of audio wanted at most) -> (mono waves, their sample rate); called only by codecs that fit
TrainingAudio = Callable[[float], tuple[list[np.ndarray], int]]


def _one_thread(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run on one CPU thread. MKL's matmuls sum in an order that depends on how many threads they get,
    so the offline codec's fit gave other bits on one thread than on two, and now and then in a
    process on a loaded machine; on one thread they are the same every time, for a fit about 1.5x
    slower (benchmarks/RESULTS.md section 12). Decoding, where a last bit matters most, maps in
    float64 instead (`SpectralRVQCodec.invert`)."""

    @functools.wraps(method)
    def run(*args: Any, **kwargs: Any) -> Any:
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return method(*args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return run


class CodecError(DiamusicError):
    """A codec that cannot be made or loaded as asked; one line for the user."""


@runtime_checkable
class Codec(Protocol):
    name: str
    sample_rate: int
    frame_rate: float
    num_codebooks: int
    codebook_size: int

    @property
    def fingerprint(self) -> str: ...

    def encode(self, wave: np.ndarray, sample_rate: int) -> np.ndarray: ...

    def encode_batch(self, waves: list[np.ndarray], sample_rate: int) -> list[np.ndarray]: ...

    def decode(self, codes: np.ndarray) -> np.ndarray: ...

    def save(self, directory: Path) -> None: ...


def _as_mono(wave: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise CodecError(f"expected a mono wave of shape (N,), got shape {wave.shape}")
    if sample_rate != target_rate:
        wave = librosa.resample(wave, orig_sr=sample_rate, target_sr=target_rate, res_type="soxr_hq")
    return wave


def _check_codes(codes: np.ndarray, num_codebooks: int, codebook_size: int) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or not 1 <= codes.shape[1] <= num_codebooks:
        raise CodecError(f"expected codes of shape (T, C) with 1 <= C <= {num_codebooks}, got {codes.shape}")
    if not np.issubdtype(codes.dtype, np.integer):
        raise CodecError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        # special tokens (EOS/PAD/BOS = codebook_size + 0/1/2) must be stripped before decoding
        raise CodecError(f"codes must lie in [0, {codebook_size}), got range [{codes.min()}, {codes.max()}]")
    return codes.astype(np.int64)


# ------------------------------------------------------------------------------------------------ DAC


class DacCodec:
    """Descript Audio Codec via transformers' `DacModel`.

    `model` is a hub id (needs the weights in the local HF cache or a network) or a local directory written
    by `save_pretrained`; both go through `DacModel.from_pretrained`. `save()` records that id/path only,
    so a saved codec directory is small but needs the same weights to be reachable when loaded.
    """

    name = "dac"

    def __init__(self, model: str = DAC_MODEL, device: str | None = None, batch_size: int = 8):
        from transformers import DacModel

        local = Path(model).expanduser()
        # resolve local dirs so a codec.json written from another working directory still finds them
        self.model_id = str(local.resolve()) if local.is_dir() else model
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = DacModel.from_pretrained(self.model_id).to(self.device).eval()
        config = self.model.config
        self.sample_rate = int(config.sampling_rate)
        self.hop_length = int(math.prod(config.downsampling_ratios))
        self.frame_rate = self.sample_rate / self.hop_length
        self.num_codebooks = int(config.n_codebooks)
        self.codebook_size = int(config.codebook_size)
        self.batch_size = batch_size
        self._fingerprint: str | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:  # hashing ~300 MB of weights takes a moment: do it once, on demand
            # the config without where it was loaded from: the same weights moved elsewhere are the same codec
            config = {k: v for k, v in self.model.config.to_dict().items() if k != "_name_or_path"}
            h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                h.update(name.encode())
                h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def encode(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        return self.encode_batch([wave], sample_rate)[0]

    @torch.inference_mode()
    def encode_batch(self, waves: list[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        """Encode several waves, `batch_size` at a time, grouping similar lengths to limit padding.

        Each result has ceil(N / hop) frames for N samples at the codec rate. The encoder sees the zero
        padding of its batch, so the last frame or two of a shorter wave can differ slightly from encoding
        it alone; everything else is the same as `encode`.
        """
        waves = [_as_mono(w, sample_rate, self.sample_rate) for w in waves]
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        results: list[np.ndarray | None] = [None] * len(waves)
        for start in range(0, len(order), self.batch_size):
            group = order[start : start + self.batch_size]
            frames = [max(1, math.ceil(len(waves[i]) / self.hop_length)) for i in group]
            batch = np.zeros((len(group), 1, max(frames) * self.hop_length), dtype=np.float32)
            for row, i in enumerate(group):
                batch[row, 0, : len(waves[i])] = waves[i]
            codes = self.model.encode(torch.from_numpy(batch).to(self.device)).audio_codes  # (B, C, T')
            for row, i in enumerate(group):
                results[i] = np.ascontiguousarray(codes[row, :, : frames[row]].T.long().cpu().numpy())
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Decode (T, C) codes, C <= num_codebooks (fewer codebooks = coarser audio), to T * hop samples."""
        codes = _check_codes(codes, self.num_codebooks, self.codebook_size)
        tokens = torch.from_numpy(codes.T[None].copy()).to(self.device)  # (1, C, T)
        audio = self.model.decode(audio_codes=tokens).audio_values  # (1, N)
        return audio[0].float().cpu().numpy()

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        info = {"name": self.name, "model": self.model_id, "fingerprint": self.fingerprint}
        if Path(self.model_id).is_dir():  # local weights: also where they lie from here, for a moved project
            info["model_relative"] = os.path.relpath(self.model_id, directory.resolve())
        (directory / CODEC_FILE).write_text(json.dumps(info, indent=2) + "\n")

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        if not str(options.get("dac_model", DAC_MODEL)).strip():
            raise CodecError("dac_model must name a hub id or a local directory")

    @classmethod
    def from_options(cls, options: dict[str, Any], training_audio: TrainingAudio) -> DacCodec:
        """A pretrained codec: nothing to fit, so ``training_audio`` is not read."""
        cls.check_options(options)
        return cls(model=options.get("dac_model", DAC_MODEL))

    @staticmethod
    def source(directory: str | Path) -> str:
        """Where a saved DAC codec's weights load from: its hub id, or its local directory (found
        beside the saved codec when both moved together)."""
        info = _read_info(directory, "model")
        model = info["model"]
        relative = (Path(directory).resolve() / str(info.get("model_relative", ""))).resolve()
        if "model_relative" in info and relative.is_dir() and not Path(model).is_dir():
            return str(relative)  # the run moved together with its weights: the fingerprint still decides
        if Path(model).is_absolute() and not Path(model).is_dir():
            raise CodecError(f"{directory}: the DAC weights it was saved with are gone from {model}")
        return model

    @classmethod
    def load(cls, directory: str | Path) -> DacCodec:
        info = _read_info(directory, "model")
        model = cls.source(directory)
        codec = cls(model=model)
        if info.get("fingerprint") not in (None, codec.fingerprint):
            raise CodecError(f"{directory}: DAC weights at {model!r} changed since the codec was saved")
        return codec


# --------------------------------------------------------------------------------------- spectral RVQ


@dataclass(frozen=True)
class SpectralConfig:
    sample_rate: int = 22050
    n_fft: int = 2048
    hop_length: int = 256  # 22050 / 256 = 86.13 frames/s, DAC's frame rate
    n_mels: int = 128
    # log-mel values are clamped here (far below a full-scale tone): silence becomes one point instead of
    # a cloud of inaudible detail that would soak up codebook entries (-50 beat -80 on pitch accuracy)
    floor_db: float = -50.0
    levels: int = 9
    codebook_size: int = 1024
    griffin_lim_iters: int = 32


class SpectralRVQCodec:
    """Offline codec: residual k-means VQ over log-mel frames, decoded by mel inversion + Griffin-Lim.

    NOT DAC quality: the decoded audio is phasey and smeared in the highs, because Griffin-Lim guesses the
    phase and 128 mel bands blur upper harmonics. It keeps the melody, which is what the demo and tests
    need: the pitch of decoded audio stays close to the source's (raw pitch accuracy at 20 cents in
    benchmarks/RESULTS.md, from benchmarks/codec_reconstruction.py). Use `DacCodec` for real work.

    Level l's codebook is k-means fitted to the residual left by levels < l, so the codes are coarse to
    fine: every added level lowers the log-mel reconstruction error (`snr_per_level`).
    """

    name = "spectral-rvq"
    FIT_SECONDS = 1800.0  # audio the codec is fitted on, at most

    def __init__(self, codebooks: np.ndarray, config: SpectralConfig):
        codebooks = np.ascontiguousarray(codebooks, dtype=np.float32)
        expected = (config.levels, config.codebook_size, config.n_mels)
        if codebooks.shape != expected:  # a saved codec whose codebooks.npy and codec.json disagree
            raise CodecError(f"codebooks have shape {codebooks.shape}, the codec's config expects {expected}")
        self.config = config
        self.codebooks = codebooks  # (levels, codebook_size, n_mels), log-mel dB
        self.sample_rate = config.sample_rate
        self.frame_rate = config.sample_rate / config.hop_length
        self.num_codebooks = config.levels
        self.codebook_size = config.codebook_size
        mel_basis = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels)
        self._mel_basis_t = torch.from_numpy(mel_basis.T.copy())  # (n_fft // 2 + 1, n_mels)
        # least-squares mel -> linear map; negative values from it are clipped before Griffin-Lim. In
        # float64: Griffin-Lim blows a last-bit difference up to an audible one, and a float64 product
        # rounded to float32 has the same bits whatever order a BLAS sums in
        self._mel_pinv = np.linalg.pinv(mel_basis.astype(np.float64)).T.copy()  # (n_mels, n_fft // 2 + 1)
        self._window = torch.hann_window(config.n_fft).numpy()

    # -- features ----------------------------------------------------------------------------------

    def features(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        """Log-mel power in dB, clamped at floor_db: (T, n_mels) float32, T = 1 + N // hop at the codec rate."""
        y = _as_mono(wave, sample_rate, self.sample_rate)
        spec = _stft(y, self.config.n_fft, self.config.hop_length, self._window)
        return self._log_mel(np.abs(spec) ** 2).numpy()

    def _frame_features(self, wave: np.ndarray, frames: np.ndarray) -> torch.Tensor:
        """`features(wave)[frames]` without transforming the frames we don't need (the fit samples a few)."""
        windows = _frames(wave, self.config.n_fft, self.config.hop_length)[frames] * self._window
        with np.errstate(invalid="ignore"):  # NaN audio gives NaN features, which `fit` refuses in one line
            return self._log_mel(np.abs(np.fft.rfft(windows, axis=1)) ** 2)

    @_one_thread
    def _log_mel(self, power: np.ndarray) -> torch.Tensor:  # (T, n_fft // 2 + 1) -> (T, n_mels)
        power = torch.from_numpy(np.ascontiguousarray(power, dtype=np.float32))
        db = 10.0 * torch.log10((power @ self._mel_basis_t).clamp_min(1e-12))
        return db.clamp_min(self.config.floor_db).float().contiguous()

    # -- quantisation ------------------------------------------------------------------------------

    @_one_thread
    def quantize(self, features: np.ndarray) -> np.ndarray:
        """Log-mel frames (T, n_mels) -> codes (T, levels) int64, each level coding the previous residual."""
        residual = torch.tensor(features, dtype=torch.float32)  # a copy: the caller's array stays intact
        codes = []
        for level in range(self.config.levels):
            book = torch.from_numpy(self.codebooks[level])
            idx = _nearest(residual, book)[0]
            residual -= book[idx]
            codes.append(idx)
        return torch.stack(codes, dim=1).numpy().astype(np.int64)

    def snr_per_level(self, waves: list[np.ndarray], sample_rate: int) -> list[float]:
        """Log-mel reconstruction SNR in dB after 1..levels levels, pooled over all frames of `waves`.

        SNR = 10 log10(sum (X - mean_band(X))^2 / sum (X - X_hat)^2) on dB log-mel values X: signal power is
        the per-band variance, so 0 dB means no better than predicting the average spectrum.
        """
        feats = np.concatenate([self.features(w, sample_rate) for w in waves]).astype(np.float64)
        signal = ((feats - feats.mean(axis=0)) ** 2).sum()
        codes = self.quantize(feats.astype(np.float32))
        recon = np.zeros_like(feats)
        snr = []
        for level in range(self.config.levels):
            recon += self.codebooks[level][codes[:, level]]
            snr.append(float(10 * np.log10(signal / max(((feats - recon) ** 2).sum(), 1e-12))))
        return snr

    # -- Codec interface ---------------------------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256(json.dumps(asdict(self.config), sort_keys=True).encode())
        h.update(self.codebooks.tobytes())
        return h.hexdigest()[:16]

    def encode(self, wave: np.ndarray, sample_rate: int) -> np.ndarray:
        return self.quantize(self.features(wave, sample_rate))

    def encode_batch(self, waves: list[np.ndarray], sample_rate: int) -> list[np.ndarray]:
        # one big nearest-centroid matmul is faster than many small ones; frames are independent
        feats = [self.features(w, sample_rate) for w in waves]
        if not feats:
            return []
        codes = self.quantize(np.concatenate(feats))
        bounds = np.cumsum([len(f) for f in feats])[:-1]
        return list(np.split(codes, bounds))

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(T, C) codes, C <= levels (fewer = coarser), -> float32 wave of (T - 1) * hop samples."""
        codes = _check_codes(codes, self.num_codebooks, self.codebook_size)
        logmel = sum(self.codebooks[level][codes[:, level]] for level in range(codes.shape[1]))
        return self.invert(np.asarray(logmel))

    def invert(self, logmel: np.ndarray) -> np.ndarray:
        """Log-mel dB frames (T, n_mels) -> wave. Pseudo-inverse of the mel filterbank, then Griffin-Lim."""
        power = (10.0 ** (np.asarray(logmel, dtype=np.float64) / 10.0)) @ self._mel_pinv
        magnitude = np.sqrt(power.clip(min=0.0)).astype(np.float32)  # (T, F)
        if len(magnitude) < 2:  # Griffin-Lim needs at least two frames to overlap-add
            return np.zeros(0, dtype=np.float32)
        wave = _griffin_lim(
            magnitude, self.config.n_fft, self.config.hop_length, self._window, self.config.griffin_lim_iters
        )
        return np.clip(wave, -1.0, 1.0)

    # -- fitting and persistence -------------------------------------------------------------------

    @classmethod
    @_one_thread
    def fit(
        cls,
        waves: list[np.ndarray],
        sample_rate: int,
        *,
        levels: int = SpectralConfig.levels,
        codebook_size: int = SpectralConfig.codebook_size,
        n_mels: int = SpectralConfig.n_mels,
        seed: int = 0,
        max_frames: int = 60_000,
        iters: int = 8,
        codec_rate: int = SpectralConfig.sample_rate,
        hop_length: int = SpectralConfig.hop_length,
        n_fft: int = SpectralConfig.n_fft,
        floor_db: float = SpectralConfig.floor_db,
    ) -> SpectralRVQCodec:
        """Fit the residual codebooks on the log-mel frames of `waves` (any rate; resampled to codec_rate).

        At most `max_frames` frames (a seeded random subset) are used, with `iters` Lloyd iterations per
        level after k-means++ initialisation (seeded on a candidate subset); together they bound the fit time
        whatever the amount of audio (measured in benchmarks/RESULTS.md).
        Deterministic for a given seed and input on a given machine.
        """
        config = SpectralConfig(
            sample_rate=codec_rate,
            n_fft=n_fft,
            hop_length=hop_length,
            n_mels=n_mels,
            levels=levels,
            codebook_size=codebook_size,
            floor_db=floor_db,
        )
        probe = cls(np.zeros((levels, codebook_size, n_mels), dtype=np.float32), config)
        waves = [_as_mono(w, sample_rate, codec_rate) for w in waves]
        # sample the frames first and transform only those: the STFT cost no longer grows with the audio
        counts = np.array([1 + len(w) // hop_length for w in waves])
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.permutation(counts.sum())[:max_frames])
        owner = np.searchsorted(np.cumsum(counts), picked, side="right")
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
        feats = torch.cat([probe._frame_features(w, picked[owner == i] - offsets[i]) for i, w in enumerate(waves)])
        if not torch.isfinite(feats).all():  # one NaN sample would pull every centroid to NaN: all codes alike
            raise CodecError("the training audio holds NaN or infinite samples: the codec cannot be fitted on it")
        gen = torch.Generator().manual_seed(seed)
        residual = feats
        books = []
        for _ in range(levels):
            book = _kmeans(residual, codebook_size, iters, gen)
            residual = residual - book[_nearest(residual, book)[0]]
            books.append(book.numpy())
        return cls(np.stack(books), config)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "codebooks.npy", self.codebooks)
        info = {
            "name": self.name,
            "config": asdict(self.config),
            "weights": "codebooks.npy",
            "fingerprint": self.fingerprint,
        }
        (directory / CODEC_FILE).write_text(json.dumps(info, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> SpectralRVQCodec:
        directory = Path(directory)
        info = _read_info(directory, "weights", "config")
        try:
            codebooks = np.load(directory / info["weights"])
            config = SpectralConfig(**info["config"])
        except (ValueError, TypeError) as exc:  # not an array file, or config keys of another version
            raise CodecError(f"{directory}: unreadable spectral-rvq codec ({first_line(exc)})") from exc
        codec = cls(codebooks, config)
        if info.get("fingerprint") not in (None, codec.fingerprint):
            raise CodecError(f"{directory}: codebooks do not match the fingerprint in {CODEC_FILE}")
        return codec

    @staticmethod
    def check_options(options: dict[str, Any]) -> None:
        size = options.get("codebook_size", SpectralConfig.codebook_size)
        if isinstance(size, bool) or not isinstance(size, int) or size < 2:
            raise CodecError(f"codebook_size must be an integer >= 2, got {size!r}")

    @classmethod
    def from_options(cls, options: dict[str, Any], training_audio: TrainingAudio) -> SpectralRVQCodec:
        """Fitted on ``training_audio`` (the caller passes training inputs only, so eval stays honest)."""
        cls.check_options(options)
        waves, rate = training_audio(cls.FIT_SECONDS)
        if not waves:
            raise CodecError("no readable training audio to fit the spectral-rvq codec on")
        size = options.get("codebook_size", SpectralConfig.codebook_size)
        return cls.fit(waves, rate, codebook_size=size, seed=options.get("seed", 0))


def _nearest(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centroid for each row of x, via chunked matmul."""
    c_sq = (centroids * centroids).sum(1)
    c_t = centroids.T.contiguous()
    idx = torch.empty(len(x), dtype=torch.long)
    dist = torch.empty(len(x), dtype=x.dtype)
    for i in range(0, len(x), chunk):
        xs = x[i : i + chunk]
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 does not change the argmin, so add it afterwards
        d = torch.addmm(c_sq, xs, c_t, alpha=-2.0)
        best, idx[i : i + chunk] = d.min(dim=1)
        dist[i : i + chunk] = (best + (xs * xs).sum(1)).clamp_min(0.0)
    return idx, dist


def _kmeans_pp(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (D^2 sampling) on a random candidate subset of x, which keeps it cheap."""
    cand = x[torch.randperm(len(x), generator=gen)[: min(len(x), 8 * k)]]
    sq = (cand * cand).sum(1)
    d2 = torch.full((len(cand),), float("inf"))
    chosen = [int(torch.randint(len(cand), (1,), generator=gen))]
    for _ in range(1, k):
        j = chosen[-1]
        d2 = torch.minimum(d2, (sq + sq[j] - 2.0 * (cand @ cand[j])).clamp_min(0.0))
        cum = torch.cumsum(d2.double(), 0)
        if cum[-1] <= 0:  # fewer distinct points than k: duplicates, which _kmeans re-seeds when empty
            chosen.append(int(torch.randint(len(cand), (1,), generator=gen)))
            continue
        u = torch.rand(1, generator=gen, dtype=torch.float64) * cum[-1]
        chosen.append(min(int(torch.searchsorted(cum, u)), len(cand) - 1))
    return cand[chosen].clone()


def _kmeans(x: torch.Tensor, k: int, iters: int, gen: torch.Generator) -> torch.Tensor:
    centroids = _kmeans_pp(x, k, gen)
    for _ in range(iters):
        idx, dist = _nearest(x, centroids)
        counts = torch.bincount(idx, minlength=k)
        sums = torch.zeros_like(centroids).index_add_(0, idx, x)
        centroids = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        empty = torch.nonzero(counts == 0).flatten()
        if len(empty):
            # a dead centroid wastes a code: move it onto the worst-served points
            far = torch.topk(dist, min(len(empty), len(x))).indices
            centroids[empty[: len(far)]] = x[far]
    return centroids


# The transforms are numpy's (pocketfft, one thread) rather than torch's: torch.istft through MKL gave
# another wave for the same input now and then (see `_one_thread`); numpy's cost about the same.


def _frames(wave: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(T, n_fft) view of the frames of a centred STFT (zero padded by n_fft // 2), T = 1 + len // hop."""
    padded = np.pad(np.asarray(wave, dtype=np.float32), (n_fft // 2, n_fft // 2))
    return np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]


def _stft(wave: np.ndarray, n_fft: int, hop: int, window: np.ndarray) -> np.ndarray:
    """Centred STFT, (T, n_fft // 2 + 1) complex64, as torch.stft(center=True, pad_mode="constant")."""
    return np.fft.rfft(_frames(wave, n_fft, hop) * window, axis=1).astype(np.complex64)


def _istft(spec: np.ndarray, n_fft: int, hop: int, window: np.ndarray, length: int) -> np.ndarray:
    """Inverse of `_stft`: windowed overlap-add in a fixed order, divided by the summed squared window."""
    frames = np.fft.irfft(spec, n_fft, axis=1).astype(np.float32) * window
    count, blocks = len(frames), -(-n_fft // hop)  # each frame spans `blocks` hop-long blocks of output
    tail = blocks * hop - n_fft
    frames = np.pad(frames, ((0, 0), (0, tail))).reshape(count, blocks, hop)
    weights = np.pad(window * window, (0, tail)).reshape(blocks, hop)
    out = np.zeros((count + blocks - 1, hop), dtype=np.float32)
    envelope = np.zeros_like(out)
    for b in range(blocks):
        out[b : b + count] += frames[:, b]
        envelope[b : b + count] += weights[b]
    start = n_fft // 2
    out, envelope = out.reshape(-1)[start : start + length], envelope.reshape(-1)[start : start + length]
    return out / np.where(envelope > 1e-11, envelope, 1.0)


def _griffin_lim(
    magnitude: np.ndarray, n_fft: int, hop: int, window: np.ndarray, n_iter: int, momentum: float = 0.99
) -> np.ndarray:
    """Fast Griffin-Lim (Perraudin et al. 2013, as in librosa) on (T, F) magnitudes, fixed initial phase."""
    rng = np.random.default_rng(0)  # same phase every call: decoding is deterministic
    angles = np.exp(2j * np.pi * rng.random(magnitude.shape, dtype=np.float32)).astype(np.complex64)
    length = (len(magnitude) - 1) * hop
    previous = np.zeros_like(angles)
    for _ in range(n_iter):
        rebuilt = _stft(_istft(magnitude * angles, n_fft, hop, window, length), n_fft, hop, window)
        angles = rebuilt - np.float32(momentum / (1 + momentum)) * previous
        angles = angles / (np.abs(angles) + np.float32(1e-16))
        previous = rebuilt
    return _istft(magnitude * angles, n_fft, hop, window, length)


# ------------------------------------------------------------------------------------ audio channels


def encode_channels(codec: Codec, clips: list[np.ndarray], sample_rate: int) -> list[np.ndarray]:
    """Clips shaped (samples, audio channels) -> codes (frames, audio channels x codebooks): each
    audio channel encoded on its own with the same codec, left's codebooks first (the research log's
    layout); one batch of the codec for all of them."""
    sides = [clip.shape[1] for clip in clips]
    waves = [np.ascontiguousarray(clip[:, side]) for clip in clips for side in range(clip.shape[1])]
    codes = iter(codec.encode_batch(waves, sample_rate))
    return [np.concatenate([next(codes) for _ in range(n)], axis=1) for n in sides]


def decode_channels(codec: Codec, codes: np.ndarray, audio_channels: int) -> np.ndarray:
    """Codes (frames, audio channels x codebooks) -> a wave (samples,) for mono, (samples, 2) for stereo."""
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] % audio_channels:
        raise CodecError(f"expected codes of shape (T, {audio_channels} x codebooks), got {codes.shape}")
    if len(codes) == 0:  # a generation that ended at once; DAC cannot decode an empty sequence
        return np.zeros((0,) if audio_channels == 1 else (0, audio_channels), dtype=np.float32)
    if audio_channels == 1:
        return codec.decode(codes)
    return np.stack([codec.decode(side) for side in np.split(codes, audio_channels, axis=1)], axis=1)


# ------------------------------------------------------------------------------------------- loading


CODECS: dict[str, type[DacCodec] | type[SpectralRVQCodec]] = {c.name: c for c in (DacCodec, SpectralRVQCodec)}
DEFAULT_CODEC = SpectralRVQCodec.name  # needs no downloaded weights; real work names DAC


def codec_class(name: str) -> type[DacCodec] | type[SpectralRVQCodec]:
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r}{did_you_mean(name, CODECS)} (choose {' or '.join(CODECS)})")
    return CODECS[name]


def load_codec(directory: str | Path) -> Codec:
    """Restore a codec saved with `save()`: same fingerprint, same codes."""
    if not (Path(directory) / CODEC_FILE).exists():
        raise CodecError(f"{directory} holds no codec ({CODEC_FILE} is missing)")
    return codec_class(_read_info(directory, "name")["name"]).load(directory)


def _read_info(directory: str | Path, *keys: str) -> dict[str, Any]:
    """A saved codec's ``codec.json``, with the keys its loader needs."""
    path = Path(directory) / CODEC_FILE
    try:
        info = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CodecError(f"{path}: not valid JSON ({type(exc).__name__})") from exc
    missing = [k for k in keys if not isinstance(info, dict) or k not in info]
    if missing:
        raise CodecError(f"{path}: no {', '.join(missing)} (not a codec saved by diamusic)")
    return info
