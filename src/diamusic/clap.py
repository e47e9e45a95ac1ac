"""A CLAP text-audio score and the Fréchet audio distance on CLAP embeddings, through transformers' `ClapModel`.

CLAP (LAION's contrastive language-audio pretraining; `laion/larger_clap_music` is trained on music) embeds
captions and audio in one space: the cosine of a caption's and a clip's embeddings says how well the clip
matches the caption, and the Fréchet distance between the embeddings of generated and real clips (FAD) how
far apart the two sets lie as distributions. The weights come from the hub or a local folder, loaded once
per process; the tests load a tiny random CLAP saved to a temporary folder through the same code.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from diamusic.errors import DiamusicError

CLAP_MODEL = "laion/larger_clap_music"
# the processor's window; a longer clip is cut to its first 10 s here, since the processor's own cut
# of a long clip is at a random place and the score would change from call to call
CLAP_SECONDS = 10.0


class ClapError(DiamusicError):
    """A CLAP model that cannot be loaded; evaluation goes on without the CLAP metrics."""


@dataclass
class Clap:
    model: Any  # transformers.ClapModel
    processor: Any  # transformers.ClapProcessor
    device: str

    @classmethod
    def load(cls, name_or_path: str, device: str = "cpu") -> Clap:
        return _load(name_or_path, device)

    @property
    def sample_rate(self) -> int:
        return int(self.processor.feature_extractor.sampling_rate)

    def embed_audio(self, waves: list[np.ndarray], sample_rate: int) -> np.ndarray:
        """(N, D) unit-length embeddings of mono waves at ``sample_rate``, each cut to CLAP_SECONDS."""
        import librosa
        import torch

        audio, most = [], int(CLAP_SECONDS * self.sample_rate)
        for wave in waves:
            wave = np.asarray(wave, dtype=np.float32).reshape(-1)[: int(CLAP_SECONDS * sample_rate) + 1]
            wave = librosa.resample(wave, orig_sr=sample_rate, target_sr=self.sample_rate, res_type="soxr_hq")
            audio.append(wave[:most])  # one sample more would be "longer": a random window
        inputs = self.processor(audio=audio, sampling_rate=self.sample_rate, return_tensors="pt")
        with torch.no_grad():
            out = self.model.get_audio_features(**{k: v.to(self.device) for k, v in inputs.items()})
        return out.pooler_output.float().cpu().numpy()

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """(N, D) unit-length embeddings of captions."""
        import torch

        # RoBERTa's positions start after the padding index: a caption takes at most positions - 2 tokens
        most = self.model.config.text_config.max_position_embeddings - 2
        inputs = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True, max_length=most)
        with torch.no_grad():
            out = self.model.get_text_features(**{k: v.to(self.device) for k, v in inputs.items()})
        return out.pooler_output.float().cpu().numpy()

    def scores(self, texts: list[str], waves: list[np.ndarray], sample_rate: int) -> list[float]:
        """The cosine of each caption with its clip: the CLAP score (1 = the closest match possible)."""
        return [float(t @ a) for t, a in zip(self.embed_text(texts), self.embed_audio(waves, sample_rate), strict=True)]


@functools.lru_cache(maxsize=2)
def _load(name_or_path: str, device: str) -> Clap:
    from transformers import ClapModel, ClapProcessor

    try:
        model = ClapModel.from_pretrained(name_or_path).to(device).eval()
        processor = ClapProcessor.from_pretrained(name_or_path)
    except Exception as exc:  # hub errors, missing files and bad configs all mean the same here
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ClapError(f"cannot load the CLAP model {name_or_path!r}: {reason}") from exc
    return Clap(model, processor, device)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians with full covariances fitted to the rows of ``a`` and ``b``
    (FAD when the rows are audio embeddings)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return frechet_from_moments(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def frechet_from_moments(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)): the squared 2-Wasserstein distance of two Gaussians."""
    from scipy import linalg

    with warnings.catch_warnings():  # fewer clips than dimensions make S1 S2 singular: its root still exists
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(np.atleast_2d(sigma1) @ np.atleast_2d(sigma2))
    root = root.real  # rounding leaves a tiny imaginary part where S1 S2 is near singular
    diff = np.atleast_1d(mu1) - np.atleast_1d(mu2)
    return float(max(diff @ diff + np.trace(np.atleast_2d(sigma1) + np.atleast_2d(sigma2) - 2 * root), 0.0))
