"""Records: the typed result of a cell (record.py), the run folder that holds them (folder.py), and the table
built from them (table.py). Everything after a cell has run reads these, never the cell's process."""
