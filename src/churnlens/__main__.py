from churnlens.cli import app

app()
