"""The history: sessions and their messages, versions, settings, search, import and export."""
