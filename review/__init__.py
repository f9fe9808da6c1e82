"""The review web app: radiologists claim, edit and sign drafts."""
