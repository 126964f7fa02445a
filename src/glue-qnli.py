"""Fine-tune on GLUE QNLI with LoRA or AdaLoRA: python src/glue-qnli.py --help"""

from adarank.pipeline import main

if __name__ == "__main__":
    main("qnli")
