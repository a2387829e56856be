"""The plan's image next to its baseline, with how far apart they are; live previews during a run.

Images are drawn by textual-image with the protocol chosen by --graphics. They are downscaled to the
pane's pixel size before being handed over, so redraws never resample a full 1024x1024 image.
"""

from __future__ import annotations

from PIL import Image
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Label, Static

from dit_explore.tui.metrics import Difference


def image_widget_class(graphics: str) -> type[Widget]:
    """The textual-image widget for a protocol. `textual_image.widget` must have been imported before
    the app started (it probes the terminal once); the CLI does that."""
    import textual_image.widget as tiw

    return {
        "auto": tiw.Image,
        "tgp": tiw.TGPImage,
        "sixel": tiw.SixelImage,
        "halfcell": tiw.HalfcellImage,
        "unicode": tiw.UnicodeImage,
    }[graphics]


def cell_pixels(graphics: str) -> tuple[int, int]:
    """Pixels one terminal cell shows with this protocol (for downscaling)."""
    if graphics in ("halfcell", "unicode"):
        return 1, 2
    try:
        from textual_image._terminal import get_cell_size

        size = get_cell_size()
        return max(1, int(size.width)), max(1, int(size.height))
    except Exception:  # noqa: BLE001 - no terminal answer: assume a common cell size
        return 10, 20


class ImageSlot(Vertical):
    """One captioned image; keeps the full image and shows a copy scaled to the slot."""

    DEFAULT_CSS = """
    ImageSlot {
        width: 1fr;
        height: 1fr;
    }
    ImageSlot > Label {
        width: 1fr;
        content-align: center middle;
        color: $text-muted;
    }
    ImageSlot > .picture {
        width: 1fr;
        height: 1fr;
    }
    """

    def __init__(self, caption: str, graphics: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._caption = caption
        self._graphics = graphics
        self.image: Image.Image | None = None

    def compose(self) -> ComposeResult:
        yield Label(self._caption, classes="caption")
        picture = image_widget_class(self._graphics)(classes="picture")
        yield picture

    def show(self, image: Image.Image | None, caption: str | None = None, *, upscale: bool = False) -> None:
        self.image = image
        if caption is not None:
            self.query_one(".caption", Label).update(caption)
        self._draw(upscale)

    def _draw(self, upscale: bool = False) -> None:
        picture = self.query_one(".picture")
        if self.image is None:
            picture.image = None  # type: ignore[attr-defined]
            return
        w, h = picture.content_size
        px_w, px_h = cell_pixels(self._graphics)
        target = (max(1, w * px_w), max(1, h * px_h))
        shown = self.image.copy()
        if upscale:  # previews are latent-sized: enlarge without inventing detail
            scale = max(1, min(target[0] // shown.width, target[1] // shown.height))
            shown = shown.resize((shown.width * scale, shown.height * scale), Image.Resampling.NEAREST)
        shown.thumbnail(target, Image.Resampling.LANCZOS)
        picture.image = shown  # type: ignore[attr-defined]

    def on_resize(self) -> None:
        if self.image is not None:
            self._draw()


class ImagePane(Vertical):
    DEFAULT_CSS = """
    ImagePane {
        height: 1fr;
        padding: 0 1;
    }
    ImagePane > Horizontal {
        height: 1fr;
    }
    ImagePane > #difference {
        height: 1;
        content-align: center middle;
        width: 1fr;
    }
    """

    def __init__(self, graphics: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._graphics = graphics

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield ImageSlot("plan", self._graphics, id="plan-image")
            yield ImageSlot("baseline", self._graphics, id="baseline-image")
        yield Static("", id="difference")

    def show_preview(self, preview: Image.Image, role: str, step: int, steps: int) -> None:
        slot = "#plan-image" if role == "plan" else "#baseline-image"
        self.query_one(slot, ImageSlot).show(preview, f"{role} · step {step}/{steps} (preview)", upscale=True)

    def show_result(self, plan: Image.Image | None, baseline: Image.Image | None, label: str,
                    apart: Difference | None) -> None:
        """A finished run (or one from the history): both images and their difference (computed once, by
        the session)."""
        self.query_one("#plan-image", ImageSlot).show(plan, f"plan · {label}" if label else "plan")
        self.query_one("#baseline-image", ImageSlot).show(baseline, "baseline (identity plan)")
        text = ""
        if apart is not None:
            text = apart.describe()
        elif plan is not None and baseline is None:
            text = "baseline not computed"
        self.query_one("#difference", Static).update(text)
