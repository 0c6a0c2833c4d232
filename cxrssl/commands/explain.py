"""`cxrssl explain` — arrives with the explain/evaluate issue."""


def run(cfg):
    print("cxrssl explain: not implemented yet")
