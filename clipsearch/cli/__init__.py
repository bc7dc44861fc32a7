"""The `clipsearch` command: typer commands (commands.py), what they print (present.py: tables,
JSON, paths) and the terminal's image previews (preview.py). May import everything below it;
nothing imports it."""
