"""Catalogues of attacks, table-driven: each row an input someone hostile (or careless) sends, and the
one-line refusal or the harmless outcome expected, with nothing else changed."""
