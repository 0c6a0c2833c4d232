"""`cxrssl evaluate` — arrives with the evaluate/evaluate issue."""


def run(cfg):
    print("cxrssl evaluate: not implemented yet")
