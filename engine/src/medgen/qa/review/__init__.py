"""A blinded reader study: can a reader tell real lesion crops from synthetic ones?

A study is one folder holding ``study.sqlite``: the cases (crops as PNG blobs, their truth and origin),
the readers (name, token), each reader's fixed balanced random order, and every answer. Readers only
ever see opaque case keys; truth and origin never leave the database except in the summary.
"""
