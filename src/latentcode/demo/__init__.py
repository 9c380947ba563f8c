"""`latentcode-demo`: a Gradio page that shows latentcode models at work (reconstruction, tokens,
model comparison, generation). `inference` computes, `app` draws the page, `command`
parses the options (no torch: `--help` answers at once); Gradio is the optional
`demo` extra (`pip install "latentcode[demo]"`)."""

from .command import main  # light: the options and main, which loads the page and the models itself

__all__ = ["main"]
