"""Fine-tune on GLUE RTE with LoRA or AdaLoRA: python src/glue-rte.py --help"""

from adarank.pipeline import main

if __name__ == "__main__":
    main("rte")
