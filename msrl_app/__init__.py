"""MSRL Studio's desktop app (PySide6): views over ``msrl_model``; no model math here.

Start-up stays fast: nothing here imports torch; model code is imported when first needed.
"""
