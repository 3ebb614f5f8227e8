"""The Typer layer: flags -> config -> one stage verb -> printed result. No ML imports here."""
