"""The text of the stand-ins: the processed dataset's problems and the tokenizer's code corpus."""

PROBLEMS = [
    {
        "id": "cc/1A",
        "difficulty": 3,
        "instruction": "Write a function add(a, b) that returns the sum of two integers.",
        "correct": [
            "def add(a, b):\n    return a + b\n",
            "def add(a, b):\n    total = a + b\n    return total\n",
        ],
        "incorrect": [
            "def add(a, b):\n    return a - b\n",
            "def add(a, b):\n    return a * b\n",
        ],
    },
    {
        "id": "cc/4B",
        "difficulty": 6,
        "instruction": "Write a function is_even(n) that returns True when n is even.",
        "correct": [
            "def is_even(n):\n    return n % 2 == 0\n",
            "def is_even(n):\n    if n % 2:\n        return False\n    return True\n",
        ],
        "incorrect": [
            "def is_even(n):\n    return n % 2 == 1\n",
            "def is_even(n):\n    return n % 3 == 0\n",
        ],
    },
    {
        "id": "cc/71C",
        "difficulty": 10,
        "instruction": "Write a function largest(xs) that returns the largest number of a list.",
        "correct": [
            "def largest(xs):\n    best = xs[0]\n    for x in xs:\n        if x > best:\n"
            "            best = x\n    return best\n",
            "def largest(xs):\n    return max(xs)\n",
        ],
        "incorrect": [
            "def largest(xs):\n    best = xs[0]\n    for x in xs:\n        if x < best:\n"
            "            best = x\n    return best\n",
            "def largest(xs):\n    return min(xs)\n",
        ],
    },
    {
        "id": "cc/158D",
        "difficulty": 13,
        "instruction": "Write a function count_vowels(s) that counts the vowels of a string.",
        "correct": [
            "def count_vowels(s):\n    return sum(1 for c in s if c in 'aeiou')\n",
            "def count_vowels(s):\n    n = 0\n    for c in s:\n        if c in 'aeiou':\n"
            "            n += 1\n    return n\n",
        ],
        "incorrect": [
            "def count_vowels(s):\n    return sum(1 for c in s if c not in 'aeiou')\n",
            "def count_vowels(s):\n    return len(s)\n",
        ],
    },
    {
        "id": "cc/339E",
        "difficulty": 18,
        "instruction": "Write a function fib(n) that returns the n-th Fibonacci number (fib(0) = 0).",
        "correct": [
            "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n"
            "    return a\n",
            "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
        ],
        "incorrect": [
            "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a * b\n"
            "    return a\n",
            "def fib(n):\n    if n < 2:\n        return 1\n    return fib(n - 1) + fib(n - 2)\n",
        ],
    },
    {
        "id": "cc/510F",
        "difficulty": 22,
        "instruction": "Write a function reverse_words(s) that reverses the order of words.",
        "correct": [
            "def reverse_words(s):\n    return ' '.join(reversed(s.split()))\n",
            "def reverse_words(s):\n    words = s.split()\n    words.reverse()\n"
            "    return ' '.join(words)\n",
        ],
        "incorrect": [
            "def reverse_words(s):\n    return s[::-1]\n",
            "def reverse_words(s):\n    return ' '.join(s.split())\n",
        ],
    },
]
"""Problems with correct AND incorrect solutions (the critic's pairs), difficulties in each of
base.toml's sampling bins (easy 1-8, medium 9-15, hard 16-25)."""


CODE_CORPUS = '''\
Below is an instruction that describes a task. Write a response that appropriately completes the request.

### Instruction:
Write a function that returns the answer.

### Response:
def solve(n):
    """Return the answer for n."""
    result = []
    for i in range(n):
        if i % 2 == 0 and i > 0:
            result.append(i * i)
        elif i in (1, 3):
            continue
        else:
            result.append(i + 1)
    return sorted(result, reverse=True)


def check(candidate):
    assert candidate(0) == []
    assert candidate(10) == [64, 36, 16, 10, 8, 6, 4]


class Stack:
    def __init__(self):
        self.items = []

    def push(self, x):
        self.items.append(x)

    def pop(self):
        return self.items.pop()

    def __len__(self):
        return len(self.items)


from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for idx, elem in enumerate(numbers):
        for idx2, elem2 in enumerate(numbers):
            if idx != idx2:
                distance = abs(elem - elem2)
                if distance < threshold:
                    return True
    return False


def parse(text: str) -> dict:
    counts = {}
    for word in text.strip().split():
        counts[word] = counts.get(word, 0) + 1
    while counts and min(counts.values()) < 2:
        counts.pop(min(counts, key=counts.get))
    return {k: str(v) for k, v in counts.items() if v is not None}
'''
"""Python in the shape of the stand-in data and HumanEval, with the Alpaca template."""
