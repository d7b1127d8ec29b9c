"""What a trained fold looks at, and how it arranges the test faces (SPEC stage 7).

Two figures per study, from fold 0's model and test split:

- `attention.png`: the first test faces of each class, each with every map the model's
  `attention_maps` names, resized bilinearly to the face: gradient saliency for every model,
  the spatial transformer's warp for DeepFER and Deep-Emotion, the AU attention map the
  capsule models were given (E2-Capsnet Fig. 1, Eq. 1) and SERD's mask for DAM-CNN (Fig. 8).
- `tsne.png`: t-SNE (van der Maaten & Hinton 2008) of the raw pixels beside each
  representation the model's `representations` names, coloured by true class, as DAM-CNN's
  Fig. 6 (raw pixels R_1, salient features R_2, high-level representation R_3) and
  E2-Capsnet's Fig. 3.

Nothing here draws a random number without the study's seed, and the PNGs carry no
timestamp, so the same model and faces give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure

from ferbench import figures
from ferbench.train import as_input

#: Test faces per class in the attention figure.
SAMPLES_PER_CLASS = 2
#: Most test faces embedded by t-SNE (taken evenly from the classes); exact t-SNE is O(N^2).
TSNE_MAX_SAMPLES = 600
#: Features are reduced to this many principal components before t-SNE, as van der Maaten
#: and Hinton do, so raw pixels and 25088-wide salient features cost alike.
TSNE_PCA_COMPONENTS = 50
#: Faces per forward pass.
BATCH = 64
HEATMAP = "jet"
HEATMAP_ALPHA = 0.5


def first_per_class(targets: np.ndarray, per_class: int, classes: int) -> np.ndarray:
    """Indices of the first `per_class` samples of each class, class by class (no RNG)."""
    return np.concatenate([np.flatnonzero(targets == k)[:per_class] for k in range(classes)]
                          ).astype(int)


def evenly_per_class(targets: np.ndarray, limit: int) -> np.ndarray:
    """At most `limit` sample indices, taken round-robin over the classes in split order."""
    queues = [list(np.flatnonzero(targets == k)) for k in np.unique(targets)]
    chosen: list[int] = []
    while len(chosen) < limit and any(queues):
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return np.sort(np.array(chosen, dtype=int))


def resized_attention_maps(model: torch.nn.Module, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    """The model's named maps, each (B, S, S) at the input's side (bilinear, as DAM-CNN Fig. 8)."""
    model.eval()
    side = inputs.shape[-2:]
    out = {}
    for name, batch_maps in model.attention_maps(inputs).items():
        resized = F.interpolate(batch_maps.detach()[:, None].float(), size=side, mode="bilinear",
                                align_corners=False)[:, 0]
        out[name] = resized.cpu().numpy()
    return out


@torch.no_grad()
def representations(model: torch.nn.Module, images: torch.Tensor, device: torch.device
                    ) -> dict[str, np.ndarray]:
    """(N, D) raw pixels of the face channel, then each representation the model names."""
    model.eval()
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), BATCH):
        inputs = as_input(images[start:start + BATCH], device)
        named = {"raw_pixels": inputs[:, 0].flatten(1), **model.representations(inputs)}
        for name, features in named.items():
            parts.setdefault(name, []).append(features.flatten(1).float().cpu().numpy())
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def tsne(features: np.ndarray, seed: int) -> np.ndarray:
    """(N, 2) t-SNE embedding; deterministic for a seed (PCA initialisation, fixed state)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 3:
        raise ValueError(f"t-SNE needs at least 3 samples, got {n}")
    if not np.ptp(features, axis=0).any():  # e.g. a SERD mask that shuts every region off
        return np.zeros((n, 2))             # t-SNE of identical points is undefined
    components = min(TSNE_PCA_COMPONENTS, n, features.shape[1])
    if features.shape[1] > components:
        features = PCA(components, svd_solver="full", random_state=seed).fit_transform(features)
    # Perplexity must stay below the sample count; 30 is the usual value.
    perplexity = float(min(30.0, (n - 1) / 3))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed,
                method="exact" if n <= 200 else "barnes_hut").fit_transform(
                    features.astype(np.float64))


def display_scale(heatmap: np.ndarray) -> np.ndarray:
    """A map in [0, 1] for colouring: a non-negative map divided by its maximum (a uniform map
    stays uniform instead of blowing float noise up to full range), a signed one (SERD's tanh
    mask) scaled symmetrically so that 0 sits at 0.5."""
    peak = np.abs(heatmap).max()
    if peak == 0:
        return np.zeros_like(heatmap)
    if heatmap.min() >= 0:
        return heatmap / peak
    return (heatmap / peak + 1) / 2


def attention_figure(faces: np.ndarray, maps: dict[str, np.ndarray], face_like: tuple[str, ...],
                     row_titles: list[str]) -> bytes:
    """Rows: sample faces; columns: the face, then each map over it (or beside it, for maps
    that are faces themselves, such as a spatial transformer's warped input)."""
    rows, columns = len(faces), 1 + len(maps)
    fig = Figure(figsize=(1.25 * columns + 0.9, 1.3 * rows + 0.3), layout="constrained")
    axes = np.asarray(fig.subplots(rows, columns, squeeze=False))
    for row, face in enumerate(faces):
        axes[row, 0].imshow(face, cmap="gray", vmin=0, vmax=1)
        axes[row, 0].set_ylabel(row_titles[row], fontsize=7)
        for column, (name, batch_maps) in enumerate(maps.items(), start=1):
            ax = axes[row, column]
            if name in face_like:  # a face in the input's [-1, 1] scale
                ax.imshow(batch_maps[row], cmap="gray", vmin=-1, vmax=1)
            else:
                ax.imshow(face, cmap="gray", vmin=0, vmax=1)
                ax.imshow(display_scale(batch_maps[row]), cmap=HEATMAP, vmin=0, vmax=1,
                          alpha=HEATMAP_ALPHA)
    for column, title in enumerate(["face", *maps]):
        axes[0, column].set_title(title, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return figures.figure_png(fig)


def tsne_figure(embeddings: dict[str, np.ndarray], targets: np.ndarray, labels: list[str]
                ) -> bytes:
    """One panel per representation, left to right, points coloured by true class."""
    fig = Figure(figsize=(3.0 * len(embeddings), 3.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(embeddings)))
    for ax, (name, points) in zip(axes, embeddings.items()):
        for k, label in enumerate(labels):
            chosen = targets == k
            if chosen.any():
                ax.scatter(points[chosen, 0], points[chosen, 1], s=7, color=f"C{k % 10}",
                           label=label)
        ax.set_title(name if np.ptp(points, axis=0).any() else f"{name} (all equal)")
        ax.set_xticks([])
        ax.set_yticks([])
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(names), 8),
               frameon=False)
    return figures.figure_png(fig)


def explain(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor,
            labels: list[str], attention_path, tsne_path, seed: int, context: dict | None = None,
            per_class: int = SAMPLES_PER_CLASS, tsne_limit: int = TSNE_MAX_SAMPLES) -> dict:
    """Write the attention and t-SNE PNGs of a test split; return what they show.

    `images` are the split's uint8 (N, C, S, S) inputs and `targets` their class indices.
    The returned dict (samples shown, map ranges, representation sizes) carries `context`,
    the study's dataset adapter and protocol, for the report's comparison with the papers.
    """
    targets_np = targets.numpy()
    device = next(model.parameters()).device
    shown = first_per_class(targets_np, per_class, len(labels))
    if not len(shown):
        raise ValueError("the test split is empty: nothing to explain")
    inputs = as_input(images[shown], device)
    with torch.no_grad():
        predicted = model.eval()(inputs).argmax(1).cpu().numpy()
    maps = resized_attention_maps(model, inputs)
    titles = [f"{labels[t]}\n(pred. {labels[p]})" for t, p in zip(targets_np[shown], predicted)]
    embedded = evenly_per_class(targets_np, tsne_limit)
    features = representations(model, images[embedded], device)
    with matplotlib.rc_context(figures.RC):
        attention_png = attention_figure(images[shown, 0].numpy() / 255.0, maps,
                                         tuple(getattr(model, "face_like_maps", ())), titles)
        tsne_png = tsne_figure({name: tsne(f, seed) for name, f in features.items()},
                               targets_np[embedded], labels)
    for path, data in ((attention_path, attention_png), (tsne_path, tsne_png)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return {
        "context": context or {},
        "samples": [{"index": int(i), "label": labels[targets_np[i]], "predicted": labels[p]}
                    for i, p in zip(shown, predicted)],
        "maps": {name: {"min": round(float(m.min()), 6), "max": round(float(m.max()), 6),
                        "mean": round(float(m.mean()), 6)} for name, m in maps.items()},
        "representations": {name: int(f.shape[1]) for name, f in features.items()},
        "tsne": {"samples": int(len(embedded)), "seed": seed},
    }
