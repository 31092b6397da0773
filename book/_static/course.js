// The course's book: every figure opens full size on a click or a tap.
// A notebook's figure is scaled down to the text column (to about a third of its size on a phone); wrapping
// it in a link to the image file itself lets a reader open it at its natural size and zoom in.
document.addEventListener("DOMContentLoaded", () => {
  const figures = document.querySelectorAll(".bd-article .cell_output img, .bd-article figure img");
  for (const image of figures) {
    if (image.closest("a")) {
      continue;  // already a link (a figure with a target)
    }
    const link = document.createElement("a");
    link.href = image.currentSrc || image.src;
    link.className = "course-figure-link";
    link.title = "Open the figure full size";
    image.replaceWith(link);
    link.appendChild(image);
  }
});
