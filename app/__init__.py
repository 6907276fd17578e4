"""LAMP Studio's dashboard: a Gradio face over core/ (settings, prompts) and jobs/ (queue, store).

`interface.py` assembles the tabs; `components/<tab>.py` builds one tab; the handlers live in plain modules
(`forms`, `monitor`, `compare`, `playground`, `uploads`) that tests call without a browser. The web process never
trains: it validates, enqueues and polls the store. The playground is the one place it runs a model.
"""
