"""`cxrssl predict` — arrives with the predict/evaluate issue."""


def run(cfg):
    print("cxrssl predict: not implemented yet")
