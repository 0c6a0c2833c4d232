"""`cxrssl finetune` — arrives with the finetune/evaluate issue."""


def run(cfg):
    print("cxrssl finetune: not implemented yet")
