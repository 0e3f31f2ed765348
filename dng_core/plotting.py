"""plot_trace: a GuidanceTrace as an RGB image, lambda_t (and p_t for DNG) against step, a line per sample."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from .trace import GuidanceTrace

__all__ = ["plot_trace", "plot_message", "PlottingUnavailable"]


class PlottingUnavailable(RuntimeError):
    """matplotlib is not installed in the Python that runs the host."""

_SCALE_LABEL = {"dng": "lambda_t (DNG)", "np": "scale (negative prompting)", "sld": "effective scale (SLD)"}


def _figure(width: int, height: int):
    if width < 64 or height < 64:
        raise ValueError(f"width and height must be >= 64 pixels, got {width}x{height}")
    try:
        from matplotlib.figure import Figure  # a Figure without pyplot: no backend, no global state between calls
    except ImportError as err:
        raise PlottingUnavailable(
            "DNG Trace Plot needs matplotlib, which is not installed in the Python that runs ComfyUI. Install the "
            "pack's requirements.txt with that Python (e.g. `python -m pip install -r requirements.txt` in "
            "custom_nodes/ComfyUI-DNG), then restart ComfyUI.") from err

    dpi = 100
    return Figure(figsize=(width / dpi, height / dpi), dpi=dpi), dpi


def _pixels(fig, dpi: int) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="rgba", dpi=dpi)
    w, h = fig.canvas.get_width_height()
    rgba = np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(h, w, 4)
    return np.ascontiguousarray(rgba[:, :, :3])


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.fill(part, width=max(20, width)) for part in text.split("\n"))


def plot_message(message: str, width: int = 768, height: int = 512) -> np.ndarray:
    """A plot-sized image that says ``message`` (when there is no run to plot), uint8 [height, width, 3]."""
    fig, dpi = _figure(width, height)
    fig.text(0.5, 0.5, _wrap(message, width // 8), ha="center", va="center", fontsize=10, color="#a00000")
    return _pixels(fig, dpi)


#: the shade of the steps where the late push does not act (stochastic_push / deterministic_push 'late')
PUSH_CUT_SHADE = "#dfe7f1"


def _mark_push_cut(ax: Any, trace: GuidanceTrace, steps: np.ndarray) -> None:
    """Shade the steps above the late push's cut (the trace's ``push_cut_model_sigma``), where DNG tracks p but
    does not push, and say so: a flat lambda of 0 there is the setting, not a guidance that never ran."""
    cut = trace.params.get("push_cut_model_sigma")
    if cut is None:
        return
    above = [i for i, st in zip(steps, trace.steps) if st.sigma > cut]
    if not above:
        return
    ax.axvspan(min(above) - 0.5, max(above) + 0.5, color=PUSH_CUT_SHADE, zorder=0, linewidth=0)
    ax.text(max(above) + 0.4, 0.97, "no push above sigma 2 s\n(the late push)",
            transform=ax.get_xaxis_transform(), ha="right", va="top", fontsize=7, color="#555555")


def plot_trace(trace: GuidanceTrace, log_scale: bool = False, width: int = 768, height: int = 512,
               title: str | None = None, notice: str | None = None) -> np.ndarray:
    """Render ``trace`` to a uint8 array [height, width, 3].

    One subplot for the guidance scale and, for DNG, one for the posterior p_t; one curve per batch element
    (and per concept when there are several, labelled with the trace's concept labels); steps at which a
    concept was pruned (not predicted) carry hollow grey markers; with the late push, the steps above its cut are
    shaded on the scale panel (no push there). ``log_scale`` puts the y axes on a log scale
    (values <= 0 are drawn at the axis floor). ``notice`` and the trace's own notes are written above the plot in
    red (e.g. "this is not the run that made your LATENT", "the guidance never ran").
    """
    fig, dpi = _figure(width, height)

    steps = np.asarray(trace.step_indices(), dtype=float)
    scale = trace.series("scale").numpy()
    p = trace.series("p").numpy()
    panels = [("scale", scale, _SCALE_LABEL.get(trace.method, "scale"))]
    if p.size:
        panels.append(("p", p, "posterior p_t(c- | x_t)"))

    labels = trace.concept_labels()
    predicted = trace.predicted_series().numpy()  # [steps, concepts]; False where a concept was pruned
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (key, values, label) in zip(axes, panels):
        if values.size == 0:
            ax.text(0.5, 0.5, "no steps recorded", ha="center", va="center", transform=ax.transAxes)
        else:
            _, concepts, batch = values.shape
            marked = False
            for k in range(concepts):
                for b in range(batch):
                    name = f"sample {b}" + (f", {labels[k]}" if concepts > 1 else "")
                    y = values[:, k, b]
                    if log_scale:
                        y = np.where(y > 0, y, np.nan)
                    (line,) = ax.plot(steps, y, marker="o", markersize=2.5, linewidth=1.4, label=name)
                    pruned = ~predicted[: len(steps), k] if predicted.shape[0] >= len(steps) else None
                    if pruned is not None and pruned.any():
                        # a pruned step: the concept was not predicted (p frozen, scale 0): hollow grey markers
                        ax.plot(steps[pruned], y[pruned], linestyle="none", marker="o", markersize=5,
                                markerfacecolor="none", markeredgecolor="#888888",
                                label=None if marked else "pruned (not predicted)")
                        marked = True
            if batch * concepts <= 8:
                ax.legend(fontsize=7, loc="best")
            elif marked:  # too many curves to name: say only what the hollow markers mean
                handles, names = ax.get_legend_handles_labels()
                keep = [i for i, n in enumerate(names) if n.startswith("pruned")]
                ax.legend([handles[i] for i in keep], [names[i] for i in keep], fontsize=7, loc="best")
        if key == "scale" and steps.size:
            _mark_push_cut(ax, trace, steps)
        if log_scale:
            ax.set_yscale("log")
        ax.set_ylabel(label, fontsize=8)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("sampler step")
    heading = title or f"{trace.method.upper()} guidance, {len(trace.steps)} steps, batch {trace.batch_size}"
    if trace.truncated:
        heading += " (truncated)"
    axes[0].set_title(heading, fontsize=9)
    warnings = [m for m in ([notice] if notice else []) + list(trace.notes) if m]
    if warnings:
        text = _wrap("\n".join(warnings), width // 7)
        lines = text.count("\n") + 1
        top = max(0.35, 1.0 - (lines * 13 + 10) / height)
        fig.tight_layout(rect=(0, 0, 1, top))
        fig.text(0.01, 0.995, text, ha="left", va="top", fontsize=8, color="#a00000")
    else:
        fig.tight_layout()
    return _pixels(fig, dpi)
