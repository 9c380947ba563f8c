"""`latentcode-demo`: a Gradio page that shows latentcode models at work (reconstruction, tokens,
model comparison, generation). `inference` computes, `app` draws the page; Gradio is the optional
`demo` extra (`pip install "latentcode[demo]"`)."""
