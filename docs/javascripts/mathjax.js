// MathJax settings for pymdownx.arithmatex (generic mode): $...$ inline, $$...$$ display. MathJax itself is
// vendored in javascripts/vendor/mathjax/ (loaded after this file), so math renders offline.
window.MathJax = {
  tex: { inlineMath: [["\\(", "\\)"]], displayMath: [["\\[", "\\]"]], processEscapes: true, processEnvironments: true },
  options: { ignoreHtmlClass: ".*|", processHtmlClass: "arithmatex" },
};
document$.subscribe(() => { MathJax.typesetPromise && MathJax.typesetPromise(); });
